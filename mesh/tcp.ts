// Mesh connections over TCP: the listener, dialling, the handshake and sealed,
// length-prefixed frames. Everything read from a socket is bounded and checked;
// a bad peer gets its connection closed with a reason, never a crash. Before a
// connection is authenticated, what it may cost us is bounded per source
// address (handshakes under way, and their rate), so one source cannot keep
// others out, and its frames are a few KiB at most.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { MeshLink, RemoteIdentity } from './link.js';
import type { Mesh } from './mesh.js';
import type { PeerKeys } from './peer-keys.js';
import { encodeMessage, pack, Tag, unpack } from './messages.js';
import { isPeerName, type PeerName } from './peer-name.js';
import {
  AUTH_FAILED_MARKER,
  HELLO_LENGTH,
  MAX_PREAUTH_FRAME,
  Opener,
  PROTOCOL_MAX,
  PROTOCOL_MIN,
  Sealer,
  checkPasswordFlags,
  decodeHello,
  encodeRefusal,
  deriveSessionKeys,
  encodeHello,
  negotiateVersion,
  newEphemeralKey,
  signTranscript,
  transcript,
  verifyTranscript,
} from './protocol-crypto.js';

const MAX_FRAME = 10 * 1024 * 1024;
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** A peer that leaves this much unread is not keeping up; it is disconnected rather than buffered forever. */
const MAX_UNSENT = 64 * 1024 * 1024;

export interface LocalIdentity {
  name: PeerName;
  nickname: string;
  uid: string;
  port: number;
  privateKeyPem: string;
  publicKey: Buffer;
  /** The password's key (protocol-crypto passwordKey), or null without a password. */
  passwordKey: Buffer | null;
}

export interface HandshakeFailure {
  addr: string;
  outbound: boolean;
  reason: string;
  at: number;
}

/** A connection refused once both sides were authenticated: its link was closed with the reason (not destroyed). */
class RefusedAfterAuth extends Error {
  constructor(reason: string) {
    super(`refused: ${reason}`);
  }
}

/** The listener could not open our first frame: it has another password. */
class AuthRefused extends Error {
  constructor() {
    super('authentication failed: the remote uses a different password');
  }
}

/**
 * Work before authentication, per source address: each source may start SOURCE_BURST handshakes at
 * once and one more per SOURCE_REFILL_MS after that, with at most SOURCE_IN_FLIGHT under way; all
 * sources together at most TOTAL_IN_FLIGHT. A source over its limits is closed at once, costing no
 * key exchange; the others are not affected.
 */
const SOURCE_BURST = 20;
const SOURCE_REFILL_MS = 50;
const SOURCE_IN_FLIGHT = 8;
const TOTAL_IN_FLIGHT = 256;
const MAX_SOURCES = 4096;

class SourceLimits {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly inFlight = new Map<string, number>();
  private total = 0;

  /** Takes a handshake slot for `host`; false when it is over its limits (or all are taken). */
  take(host: string, now = Date.now()): boolean {
    if (this.total >= TOTAL_IN_FLIGHT || (this.inFlight.get(host) ?? 0) >= SOURCE_IN_FLIGHT) return false;
    const b = this.buckets.get(host) ?? { tokens: SOURCE_BURST, at: now };
    b.tokens = Math.min(SOURCE_BURST, b.tokens + Math.floor((now - b.at) / SOURCE_REFILL_MS));
    b.at = b.tokens === SOURCE_BURST ? now : b.at + Math.floor((now - b.at) / SOURCE_REFILL_MS) * SOURCE_REFILL_MS;
    if (b.tokens <= 0) return false;
    b.tokens--;
    this.buckets.delete(host); // re-insert: the map's order is then oldest first
    this.buckets.set(host, b);
    if (this.buckets.size > MAX_SOURCES) this.buckets.delete(this.buckets.keys().next().value!);
    this.inFlight.set(host, (this.inFlight.get(host) ?? 0) + 1);
    this.total++;
    return true;
  }

  /** Gives back a slot taken for `host` (the handshake ended, either way). */
  done(host: string): void {
    const n = (this.inFlight.get(host) ?? 0) - 1;
    if (n > 0) this.inFlight.set(host, n);
    else this.inFlight.delete(host);
    this.total = Math.max(0, this.total - 1);
  }

  get underWay(): number {
    return this.total;
  }
}

/** Reads a TCP stream first as fixed-size chunks (the hello), then as length-prefixed frames. */
class StreamReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private waiter: (() => void) | null = null;
  private ended: Error | null = null;

  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
    this.wake();
  }

  end(err: Error): void {
    this.ended ??= err;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  take(n: number): Buffer | null {
    if (this.length < n) return null;
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return out;
  }

  /** The next frame if complete; throws on a frame over the size limit (and on the listener's refusal marker). */
  takeFrame(max = MAX_FRAME): Buffer | null {
    if (this.length < 4) return null;
    const head = this.chunks[0].length >= 4 ? this.chunks[0] : Buffer.concat(this.chunks);
    const len = head.readUInt32BE(0);
    if (len === AUTH_FAILED_MARKER) throw new AuthRefused();
    if (len > max) throw new Error(`frame of ${len} bytes exceeds the limit of ${max}`);
    if (this.length < 4 + len) return null;
    return this.take(4 + len)!.subarray(4);
  }

  async read(n: number): Promise<Buffer> {
    for (;;) {
      const b = this.take(n);
      if (b) return b;
      if (this.ended) throw this.ended;
      await new Promise<void>((r) => (this.waiter = r));
    }
  }

  async readFrame(max = MAX_FRAME): Promise<Buffer> {
    for (;;) {
      const f = this.takeFrame(max);
      if (f) return f;
      if (this.ended) throw this.ended;
      await new Promise<void>((r) => (this.waiter = r));
    }
  }
}

class TcpLink implements MeshLink {
  onMessage: ((message: Uint8Array) => void) | null = null;
  onClose: ((reason: string) => void) | null = null;
  private closed = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly reader: StreamReader,
    private readonly sealer: Sealer,
    private readonly opener: Opener,
    readonly remote: RemoteIdentity,
    readonly outbound: boolean,
    readonly connUid: bigint,
    readonly remoteAddr: string,
    readonly direct: boolean,
    readonly sleeveKeys: { send: Buffer; receive: Buffer },
  ) {}

  /** Starts delivering frames to onMessage; called once the mesh has accepted the link. */
  start(): void {
    const pump = () => {
      try {
        for (;;) {
          const frame = this.reader.takeFrame();
          if (!frame) return;
          const plain = this.opener.open(frame);
          this.onMessage?.(plain);
          if (this.closed) return;
        }
      } catch (err) {
        this.close(`bad frame from peer: ${(err as Error).message}`);
      }
    };
    this.socket.on('data', (b: Buffer) => {
      this.reader.push(b);
      pump();
    });
    this.socket.on('close', () => this.terminated('connection closed by peer'));
    this.socket.on('error', (err) => this.terminated(`socket error: ${err.message}`));
    pump();
  }

  send(message: Uint8Array): void {
    if (this.closed) return;
    if (this.socket.writableLength > MAX_UNSENT) {
      this.close('peer is not reading its messages');
      return;
    }
    const sealed = this.sealer.seal(message);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(sealed.length);
    this.socket.write(Buffer.concat([head, sealed]));
  }

  close(reason: string): void {
    if (this.closed) return;
    this.send(encodeMessage({ tag: Tag.Close, reason }));
    this.closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onClose?.(reason);
  }

  private terminated(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.onClose?.(reason);
  }
}

function addrOf(socket: net.Socket): string {
  const host = socket.remoteAddress ?? '?';
  const h = host.startsWith('::ffff:') ? host.slice(7) : host;
  return `${h.includes(':') ? `[${h}]` : h}:${socket.remotePort ?? 0}`;
}

interface Features {
  name: PeerName;
  nickname: string;
  uid: string;
  connId: Buffer;
  port: number;
  key: Buffer;
  sig: Buffer;
}

function parseFeatures(plain: Buffer): Features {
  const v = unpack(plain) as Record<string, unknown>;
  if (typeof v !== 'object' || v === null) throw new Error('handshake features are not a map');
  const { name, nickname, uid, connId, port, key, sig } = v;
  if (!isPeerName(name)) throw new Error('handshake carries an invalid peer name');
  if (typeof nickname !== 'string' || nickname.length > 255) throw new Error('handshake carries an invalid nickname');
  if (typeof uid !== 'string' || !/^[0-9a-f]{16}$/.test(uid)) throw new Error('handshake carries an invalid uid');
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)
    throw new Error('handshake carries an invalid port');
  for (const [n, b, len] of [
    ['connId', connId, 8],
    ['key', key, 32],
    ['sig', sig, 64],
  ] as const) {
    if (!(b instanceof Uint8Array) || b.length !== len) throw new Error(`handshake field ${n} is malformed`);
  }
  return {
    name,
    nickname,
    uid,
    port,
    connId: Buffer.from(connId as Uint8Array),
    key: Buffer.from(key as Uint8Array),
    sig: Buffer.from(sig as Uint8Array),
  };
}

export interface DialOptions {
  /** A user-given target rather than a discovered one. */
  direct: boolean;
  /** For discovered targets: the peer expected at that address. */
  expect?: PeerName;
}

/** Failed handshakes in a row from one address before it is refused for a while. */
export const PENALTY_AFTER = 5;

export class TcpTransport {
  private server: net.Server | null = null;
  private readonly limits = new SourceLimits();
  private readonly sockets = new Set<net.Socket>();
  /** Recent inbound handshake failures, for status. */
  readonly failures: HandshakeFailure[] = [];
  /** Connections closed at once because their source had too many handshakes under way or too fast. */
  readonly stats = { overLimit: 0 };
  /**
   * Sources whose handshakes keep failing (a wrong password, garbage, a scanner): after
   * PENALTY_AFTER failures in a row, new connections from that address get a refusal instead of a
   * handshake, for a time that doubles with each further failure (at most a minute).
   */
  private readonly penalties = new Map<string, { fails: number; until: number }>();

  constructor(
    private readonly mesh: Mesh,
    private readonly local: LocalIdentity,
    /** Each peer name's key, pinned at first sight. */
    private readonly keys: PeerKeys,
  ) {}

  async listen(host: string, port: number): Promise<void> {
    const server = net.createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.mesh.log.error({ err: err.message }, 'mesh listener error'));
  }

  private accept(socket: net.Socket): void {
    const addr = addrOf(socket);
    const host = socket.remoteAddress ?? '?';
    const p = this.penalties.get(host);
    if (p && p.until > Date.now()) {
      // Costs us no key exchange; tells an honest peer with a wrong password why.
      socket.on('error', () => undefined);
      socket.end(encodeRefusal((p.until - Date.now()) / 1000));
      return;
    }
    if (!this.limits.take(host)) {
      this.stats.overLimit++;
      socket.destroy();
      return;
    }
    this.handshake(socket, false, { direct: false }).then(
      () => {
        this.limits.done(host);
        this.penalties.delete(host);
      },
      (err: Error) => {
        this.limits.done(host);
        // Losing a duplicate-connection tie-break is routine, not a failure to show.
        if (err.message.includes('duplicate connection')) return;
        this.recordFailure(addr, false, err.message);
        if (/authentication failed|not a weft peer|timed out|version mismatch|frame/.test(err.message))
          this.penalise(host);
      },
    );
  }

  private penalise(host: string): void {
    const p = this.penalties.get(host) ?? { fails: 0, until: 0 };
    p.fails++;
    if (p.fails >= PENALTY_AFTER) p.until = Date.now() + Math.min(60_000, 1000 * 2 ** (p.fails - PENALTY_AFTER));
    this.penalties.delete(host); // re-insert: the map's order is then oldest first
    this.penalties.set(host, p);
    if (this.penalties.size > 4096) this.penalties.delete(this.penalties.keys().next().value!);
    if (p.fails === PENALTY_AFTER)
      this.mesh.log.warn(
        { host, failures: p.fails },
        'refusing this address for a while after repeated failed handshakes',
      );
  }

  private recordFailure(addr: string, outbound: boolean, reason: string): void {
    this.mesh.log.warn({ addr, outbound, reason }, 'connection failed');
    this.failures.push({ addr, outbound, reason, at: Date.now() });
    if (this.failures.length > 20) this.failures.shift();
  }

  /** Dials a peer; resolves once the mesh accepted the connection, rejects with the reason otherwise. */
  dial(host: string, port: number, opts: DialOptions): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const socket = net.connect({ host, port });
      const timer = setTimeout(() => socket.destroy(new Error('connect timed out')), HANDSHAKE_TIMEOUT_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        this.handshake(socket, true, opts).then(resolve, reject);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(err.message));
      });
    });
  }

  private async handshake(socket: net.Socket, outbound: boolean, opts: DialOptions): Promise<void> {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setNoDelay(true);
    const reader = new StreamReader();
    const onData = (b: Buffer) => reader.push(b);
    const onEnd = () => reader.end(new Error('the remote closed the connection during the handshake'));
    const onError = (err: Error) => reader.end(new Error(`socket error during the handshake: ${err.message}`));
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
    const timer = setTimeout(() => reader.end(new Error('handshake timed out')), HANDSHAKE_TIMEOUT_MS);
    const addr = addrOf(socket);
    try {
      const eph = newEphemeralKey();
      const ours = {
        min: PROTOCOL_MIN,
        max: PROTOCOL_MAX,
        hasPassword: this.local.passwordKey !== null,
        publicKey: eph.publicKey,
      };
      const ourHello = encodeHello(ours);
      socket.write(ourHello);
      const theirHello = await reader.read(HELLO_LENGTH);
      const theirs = decodeHello(theirHello);
      if (theirs.refusedForSeconds !== undefined) {
        throw new Error(
          `the remote refuses us for ${theirs.refusedForSeconds}s after repeated failed handshakes from this address (a different password?)`,
        );
      }
      negotiateVersion(ours, theirs);
      checkPasswordFlags(ours, theirs);
      const helloOut = outbound ? ourHello : theirHello;
      const helloIn = outbound ? theirHello : ourHello;
      const keys = deriveSessionKeys(
        eph.privateKey,
        theirs.publicKey,
        this.local.passwordKey,
        helloOut,
        helloIn,
        outbound,
      );
      const sealer = new Sealer(keys.send);
      const opener = new Opener(keys.receive);

      const connId = randomBytes(8);
      const sendFeatures = () => {
        const sealed = sealer.seal(
          pack({
            name: this.local.name,
            nickname: this.local.nickname,
            uid: this.local.uid,
            connId,
            port: this.local.port,
            key: this.local.publicKey,
            sig: signTranscript(this.local.privateKeyPem, transcript(helloOut, helloIn, outbound)),
          }),
        );
        const head = Buffer.alloc(4);
        head.writeUInt32BE(sealed.length);
        socket.write(Buffer.concat([head, sealed]));
      };
      // The dialer proves the password first; the listener says nothing derived from it until then.
      if (outbound) sendFeatures();
      const frame = await reader.readFrame(MAX_PREAUTH_FRAME);
      let plain: Buffer;
      try {
        plain = opener.open(frame);
      } catch {
        if (!outbound) {
          // Plain words, nothing derived from the password: tells an honest peer why.
          const marker = Buffer.alloc(4);
          marker.writeUInt32BE(AUTH_FAILED_MARKER);
          socket.write(marker);
        }
        throw new Error(
          this.local.passwordKey !== null
            ? 'authentication failed: the remote uses a different password'
            : 'authentication failed: the first frame did not decrypt',
        );
      }
      const f = parseFeatures(plain);
      if (!verifyTranscript(f.key, transcript(helloOut, helloIn, !outbound), f.sig)) {
        throw new Error('authentication failed: the remote could not prove it holds its key');
      }
      if (!outbound) sendFeatures();
      if (opts.expect && f.name !== opts.expect) {
        throw new Error(`found peer ${f.name}(${f.nickname}) where ${opts.expect} was expected`);
      }
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      const connUid = connId.readBigUInt64BE() ^ f.connId.readBigUInt64BE();
      const link = new TcpLink(
        socket,
        reader,
        sealer,
        opener,
        { name: f.name, nickname: f.nickname, uid: f.uid, port: f.port },
        outbound,
        connUid,
        addr,
        outbound && opts.direct,
        keys.sleeve,
      );
      // Both sides are authenticated: a refusal now can say why, sealed.
      const pinned = this.keys.check(f.name, f.key);
      if (pinned) {
        link.close(pinned); // the Close goes out sealed before the socket ends
        throw new RefusedAfterAuth(pinned);
      }
      const res = this.mesh.addConnection(link);
      if (!res.ok) throw new Error(`connection refused: ${res.reason}`);
      link.start();
    } catch (err) {
      clearTimeout(timer);
      if (!(err instanceof RefusedAfterAuth)) socket.destroy();
      throw err;
    }
  }

  close(): void {
    this.server?.close();
    for (const s of this.sockets) s.destroy();
  }
}
