// Loads weft's native addon (weft_native.cc) and wraps its two ports. The
// addon is built by `npm install`; when it is missing, `native()` says why and
// the callers run without what needs it.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Per-slot metadata words: length, address, port, flags. The address is an IPv4 address (host order)
 * or, in 0.0.0.0/8, the handle of an IPv6 one (ipv6Handle).
 */
export const META = 4;
const FLAG_TRUNCATED = 1;
/** The fast path carried this datagram already: JavaScript skips the slot. */
const FLAG_HANDLED = 2;
/** The fast path opened the slot's sealed datagrams in place (HopCipher): see UdpPort.opened(). */
const FLAG_OPENED = 4;
/** What sealing adds: a 64-bit counter and a 16-byte tag. */
const SEAL_OVERHEAD = 24;

interface RawPort {
  close(): void;
  unref(): void;
  stats(): PortStats;
}
interface RawUdp extends RawPort {
  send(count: number): number;
  localPort(): number | null;
  features(): { gso: boolean; gro: boolean; ipv6: boolean };
  deliverTo(tap: RawTap, fast: RawFastPath): void;
}
interface RawTap extends RawPort {
  write(count: number): number;
  forwardTo(udp: RawUdp, fast: RawFastPath): void;
}
interface RawFastPath {
  update(table: Buffer, ciphers: RawHopCipher[]): void;
  stats(): FastPathStats;
}
interface RawHopCipher {
  seal(out: Buffer, plain: Buffer, aad?: Buffer): void;
  open(out: Buffer, sealed: Buffer, aad?: Buffer): boolean;
}
interface Addon {
  UdpPort: new (opts: object, onReadable: (n: number) => void) => RawUdp;
  TapPort: new (opts: object, onReadable: (n: number) => void) => RawTap;
  FastPath: new () => RawFastPath;
  HopCipher: new (send: Buffer, receive: Buffer) => RawHopCipher;
  constants: Record<string, number>;
  addressHandle(ipv6: string): number;
  releaseAddressHandle(handle: number): void;
  /** Missing in an addon built before it. */
  netlinkRequest?(protocol: number, message: Buffer, netns?: string): Buffer;
  /** Missing in an addon built before it. */
  NetlinkWatch?: new (
    protocol: number,
    groups: number[],
    onChange: (overrun: boolean) => void,
    options?: WatchOptions,
  ) => NetlinkWatch;
}

export interface WatchOptions {
  /** The path of another network namespace to watch (tests). */
  netns?: string;
  /** nftables: only messages naming one of these tables count (and overruns). */
  nftTables?: string[];
}

/** A netlink socket joined to multicast groups: `onChange` when the kernel's messages come (one call per wake-up). */
export interface NetlinkWatch {
  close(): void;
  /** The watch does not keep the process alive by itself. */
  unref(): void;
  /** `failed`: its poll failed and it hears nothing more (`lastError` says why). */
  stats(): { messages: number; overruns: number; ignored: number; failed: boolean; lastError: string | null };
}

/**
 * Where the addon's idea of a wire format differs from `expected` (names whose values differ), or
 * null when they agree (or the addon is not loaded). The caller owns the format; the addon reports
 * what it was built with.
 */
export function nativeConstantsDiffer(expected: Record<string, number>): string | null {
  const a = native();
  if (typeof a === 'string') return null;
  const wrong = Object.entries(expected).filter(([k, v]) => a.constants?.[k] !== v);
  return wrong.length > 0
    ? `the native addon was built for another packet format (${wrong.map(([k, v]) => `${k} ${a.constants?.[k]} there, ${v} here`).join(', ')}): rebuild it (npm install)`
    : null;
}

export interface FastPathStats {
  framesOut: number;
  bytesOut: number;
  framesIn: number;
  bytesIn: number;
  /** Frames for local containers the TAP did not take (its queue was full). */
  tapDropped: number;
  /** Sealed datagrams that did not open (unknown hop, forged, corrupted, replayed). */
  refused: number;
}

/**
 * ChaCha20-Poly1305 for one hop in the addon (OpenSSL, as Node links it), in the sleeve's format
 * (datapath/sleeve/packet.ts: counter, ciphertext, tag; nonce from the counter). It holds the hop's
 * only send counter and replay window: the fast path and JavaScript both seal and open through it.
 */
export class HopCipher {
  readonly raw: RawHopCipher;
  constructor(send: Buffer, receive: Buffer) {
    this.raw = new (addonOrThrow().HopCipher)(send, receive);
  }
  /** Counter, ciphertext and tag; `aad` is authenticated beside it (a fragment's header). */
  seal(plain: Buffer, aad?: Buffer): Buffer {
    const out = Buffer.allocUnsafe(plain.length + SEAL_OVERHEAD);
    this.raw.seal(out, plain, aad);
    return out;
  }
  /** The plaintext, or null for forged, corrupted, replayed or short packets. */
  open(sealed: Buffer, aad?: Buffer): Buffer | null {
    if (sealed.length < SEAL_OVERHEAD) return null;
    const out = Buffer.allocUnsafe(sealed.length - SEAL_OVERHEAD);
    return this.raw.open(out, sealed, aad) ? out : null;
  }
}

/** A route the fast path may use: frames to `mac` go to peer `dst` by the hop at addr:port. */
export interface FastRoute {
  mac: number;
  dst: number;
  addr: number;
  port: number;
  /** The largest datagram to that hop. */
  max: number;
  /** The hop's keys when it is encrypted. */
  cipher: HopCipher | null;
}

/** A directly connected peer: its id (peer name as a number), underlay address and keys when encrypted. */
export interface FastHop {
  id: number;
  addr: number;
  cipher: HopCipher | null;
}

/**
 * The sleeve's decisions, as tables the addon uses per packet without calling JavaScript: frames
 * between a TAP and a UDP port linked with link() go natively when these say where.
 */
export class FastPath {
  readonly raw: RawFastPath;
  constructor() {
    this.raw = new (addonOrThrow().FastPath)();
  }
  /** Replaces the tables: our peer id, routes by MAC, hops (id -> address and keys), MACs known to the endpoint table. */
  update(self: number, routes: FastRoute[], hops: FastHop[], known: number[]): void {
    const ciphers: RawHopCipher[] = [];
    const index = new Map<HopCipher, number>();
    const cipherIndex = (c: HopCipher | null): number => {
      if (!c) return 0xffff;
      let i = index.get(c);
      if (i === undefined) {
        i = ciphers.push(c.raw) - 1;
        index.set(c, i);
      }
      return i;
    };
    const b = Buffer.alloc(6 + 4 + routes.length * 22 + 4 + hops.length * 12 + 4 + known.length * 6);
    let o = b.writeUIntBE(self, 0, 6);
    o = b.writeUInt32BE(routes.length, o);
    for (const r of routes) {
      o = b.writeUIntBE(r.mac, o, 6);
      o = b.writeUIntBE(r.dst, o, 6);
      o = b.writeUInt32BE(r.addr, o);
      o = b.writeUInt16BE(r.port, o);
      o = b.writeUInt16BE(Math.min(r.max, 0xffff), o);
      o = b.writeUInt16BE(cipherIndex(r.cipher), o);
    }
    o = b.writeUInt32BE(hops.length, o);
    for (const h of hops) {
      o = b.writeUIntBE(h.id, o, 6);
      o = b.writeUInt32BE(h.addr, o);
      o = b.writeUInt16BE(cipherIndex(h.cipher), o);
    }
    o = b.writeUInt32BE(known.length, o);
    for (const m of known) o = b.writeUIntBE(m, o, 6);
    this.raw.update(b, ciphers);
  }
  stats(): FastPathStats {
    return this.raw.stats();
  }
  /**
   * Frames from `tap` to known routes go out of `udp` (sealed on encrypted hops); sealed datagrams
   * from encrypted hops are opened in place (UdpPort.opened); messages for us from known hops go into `tap`.
   */
  link(tap: TapPort, udp: UdpPort): void {
    tap.raw.forwardTo(udp.raw, this.raw);
    udp.raw.deliverTo(tap.raw, this.raw);
  }
}

interface PortStats {
  rxPackets: number;
  txPackets: number;
  txDropped: number;
  lastError: string | null;
}

let loaded: Addon | string | null = null;

/** The addon's directory: native/ beside the sources, or above dist/native (compiled). */
function addonDir(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'native', 'binding.gyp'))) return join(dir, 'native');
    if (existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  return null;
}

/** The addon, or the reason it cannot be used. */
function native(): Addon | string {
  if (loaded) return loaded;
  const dir = addonDir();
  if (!dir) return (loaded = 'the native addon sources (native/) are not where weft expects them');
  const file = join(dir, 'build', 'Release', 'weft_native.node');
  if (!existsSync(file)) {
    const why = join(dir, 'build', 'why-not-built.txt');
    const detail = existsSync(why) ? `: ${readFileSync(why, 'utf8').trim()}` : ' (run `npm install` to build it)';
    return (loaded = `the native addon is not built${detail}`);
  }
  try {
    loaded = createRequire(import.meta.url)(file) as Addon;
  } catch (err) {
    loaded = `the native addon does not load: ${(err as Error).message}`;
  }
  return loaded;
}

export function nativeError(): string | null {
  const n = native();
  return typeof n === 'string' ? n : null;
}

function addonOrThrow(): Addon {
  const n = native();
  if (typeof n === 'string') throw new Error(n);
  return n;
}

/**
 * One request to the kernel over netlink, answered within the call (weft_native.cc): the answer's
 * messages as the kernel sent them, or null when the addon is missing or was built before this call.
 * Throws the kernel's error. `netns`: the path of another network namespace to ask (tests).
 */
export function netlinkRequest(protocol: number, message: Buffer, netns?: string): Buffer | null {
  const n = native();
  if (typeof n === 'string' || !n.netlinkRequest) return null;
  return n.netlinkRequest(protocol, message, netns);
}

/**
 * Tells `onChange` when the kernel reports a change to any of netlink `protocol`'s multicast `groups`
 * (weft_native.cc: the messages are counted, and nftables' looked into for their table only;
 * `overrun` when some were lost). Null when the addon is missing or was built before this call;
 * throws when the socket cannot be made (no CAP_NET_ADMIN for the group, say).
 */
export function watchNetlink(
  protocol: number,
  groups: number[],
  onChange: (overrun: boolean) => void,
  options: WatchOptions = {},
): NetlinkWatch | null {
  const n = native();
  if (typeof n === 'string' || !n.NetlinkWatch) return null;
  return new n.NetlinkWatch(protocol, groups, onChange, options);
}

/**
 * The metadata word for an IPv6 underlay address: a handle in 0.0.0.0/8, registered for good in the
 * addon (the same address always gets the same one; an IPv4-mapped address gives its IPv4 address).
 */
export function ipv6Handle(host: string): number {
  return addonOrThrow().addressHandle(host);
}

/** Whether a metadata word is an IPv6 handle (0.0.0.0/8) rather than an IPv4 address. */
export function isIpv6Handle(word: number): boolean {
  return word > 0 && word < 1 << 24;
}

/** Gives an IPv6 handle back: no hop has its address any more (the address reads as unknown again). */
export function releaseIpv6Handle(handle: number): void {
  if (isIpv6Handle(handle)) addonOrThrow().releaseAddressHandle(handle);
}

interface Slots {
  slots?: number;
  slotSize?: number;
}

/** Shared buffers: what the addon fills (rx) and what it sends (tx), slot by slot. */
abstract class SlotBuffers {
  abstract readonly raw: RawPort;
  readonly slots: number;
  readonly slotSize: number;
  readonly rx: Buffer;
  readonly rxMeta: Uint32Array;
  readonly tx: Buffer;
  readonly txMeta: Uint32Array;
  constructor(o: Slots, defaultSize: number) {
    this.slots = o.slots ?? 64;
    this.slotSize = o.slotSize ?? defaultSize;
    this.rx = Buffer.alloc(this.slots * this.slotSize);
    this.tx = Buffer.alloc(this.slots * this.slotSize);
    this.rxMeta = new Uint32Array(this.slots * META);
    this.txMeta = new Uint32Array(this.slots * META);
  }
  /** The i-th received packet (a view: valid until the callback returns). */
  received(i: number): Buffer {
    return this.rx.subarray(i * this.slotSize, i * this.slotSize + this.rxMeta[i * META]);
  }
  /** The i-th transmit slot, to fill before send/write. */
  slot(i: number): Buffer {
    return this.tx.subarray(i * this.slotSize, (i + 1) * this.slotSize);
  }
  stats(): PortStats {
    return this.raw.stats();
  }
  /** Lets the process exit while the port is open. */
  unref(): void {
    this.raw.unref();
  }
  /** Closes the descriptor (a TAP interface disappears); safe to call twice. */
  close(): void {
    this.raw.close();
  }
}

export interface UdpOptions extends Slots {
  address?: string;
  port: number;
  /** Open it inside this network namespace (a path such as /var/run/netns/NAME). */
  netns?: string;
  /** Set DF on every datagram (for path MTU probes); otherwise IP may fragment. */
  dontFragment?: boolean;
  /** Accept trains of datagrams joined by the kernel (UDP_GRO); segmentSize(i) says how to cut them. */
  gro?: boolean;
  rcvbuf?: number;
  sndbuf?: number;
}

/** A UDP socket read with recvmmsg and written with sendmmsg, a batch per call. */
export class UdpPort extends SlotBuffers {
  readonly raw: RawUdp;
  private queued = 0;
  /**
   * `onBatch(n)` gets the number of datagrams in rx slots 0..n-1; it must not throw
   * and must be done with them when it returns.
   */
  constructor(o: UdpOptions, onBatch: (n: number) => void) {
    super(o, 2048);
    const A = addonOrThrow();
    this.raw = new A.UdpPort(
      {
        ...o,
        slots: this.slots,
        slotSize: this.slotSize,
        rx: this.rx,
        rxMeta: this.rxMeta,
        tx: this.tx,
        txMeta: this.txMeta,
      },
      onBatch,
    );
  }
  fromAddress(i: number): number {
    return this.rxMeta[i * META + 1];
  }
  fromPort(i: number): number {
    return this.rxMeta[i * META + 2];
  }
  truncated(i: number): boolean {
    return (this.rxMeta[i * META + 3] & FLAG_TRUNCATED) !== 0;
  }
  /**
   * Whether the fast path opened slot i's sealed datagrams in place: each sealed one that opened has
   * its plaintext 8 bytes after its header's end and 16 bytes short of its end; one that did not
   * open has version 0 (and was counted as refused).
   */
  opened(i: number): boolean {
    return (this.rxMeta[i * META + 3] & FLAG_OPENED) !== 0;
  }
  /** Whether the fast path (FastPath.link) carried slot i already. */
  handled(i: number): boolean {
    return (this.rxMeta[i * META + 3] & FLAG_HANDLED) !== 0;
  }
  /** With the `gro` option: the size of the datagrams joined in slot i (0 when it is one datagram). */
  segmentSize(i: number): number {
    return this.rxMeta[i * META + 3] >>> 8;
  }
  /** The next free transmit slot, to fill and then commit (commit flushes a full batch, so there always is one). */
  nextSlot(): Buffer {
    return this.slot(this.queued);
  }
  /** Where the next free slot starts in `tx`, for filling it in place (then commit). */
  nextOffset(): number {
    return this.queued * this.slotSize;
  }
  /**
   * Queues the slot just filled by nextSlot(): `len` bytes to addr:port. Flushes when the batch is
   * full. With `segment`, the slot is a train of datagrams of that size laid end to end (the last may
   * be shorter), handed to the kernel as one (UDP_SEGMENT).
   */
  commit(len: number, addr: number, port: number, segment = 0): void {
    const m = this.queued * META;
    this.txMeta[m] = len;
    this.txMeta[m + 1] = addr;
    this.txMeta[m + 2] = port;
    this.txMeta[m + 3] = segment << 8;
    this.queued++;
    if (this.queued >= this.slots) this.flush();
  }
  /** Copies `data` into a slot and queues it. */
  queue(data: Uint8Array, addr: number, port: number): void {
    if (data.length > this.slotSize)
      throw new Error(`datagram of ${data.length} bytes exceeds the slot size ${this.slotSize}`);
    this.nextSlot().set(data);
    this.commit(data.length, addr, port);
  }
  /** Sends what is queued in one sendmmsg; returns how many went. */
  flush(): number {
    if (this.queued === 0) return 0;
    const n = this.raw.send(this.queued);
    this.queued = 0;
    return n;
  }
  get localPort(): number | null {
    return this.raw.localPort();
  }
  /** gso: commit() may pass a segment size; gro: received slots may hold joined trains. */
  /** gso: sends segment trains; gro: takes them joined; ipv6: reaches IPv6 addresses too (dual-stack). */
  get features(): { gso: boolean; gro: boolean; ipv6: boolean } {
    return this.raw.features();
  }
}

export interface TapOptions extends Slots {
  name: string;
  /** Create it inside this network namespace (a path such as /var/run/netns/NAME). */
  netns?: string;
  /** Frames carry a 10-byte virtio-net header; TSO super-frames up to 64 KB arrive whole. */
  vnetHdr?: boolean;
}

/** The largest frame a TAP with offloads hands over, plus its virtio header. */
const TAP_SLOT = 65536 + 10 + 14 + 4;

/** A TAP interface (removed when closed), read and written a batch per call. */
export class TapPort extends SlotBuffers {
  readonly raw: RawTap;
  private queued = 0;
  constructor(o: TapOptions, onBatch: (n: number) => void) {
    super(o, TAP_SLOT);
    const A = addonOrThrow();
    this.raw = new A.TapPort(
      {
        ...o,
        slots: this.slots,
        slotSize: this.slotSize,
        rx: this.rx,
        rxMeta: this.rxMeta,
        tx: this.tx,
        txMeta: this.txMeta,
      },
      onBatch,
    );
  }
  /** Copies a frame (with its virtio header when vnetHdr) into a slot; writes when the batch is full. */
  queue(frame: Uint8Array): void {
    if (frame.length > this.slotSize)
      throw new Error(`frame of ${frame.length} bytes exceeds the slot size ${this.slotSize}`);
    this.slot(this.queued).set(frame);
    this.txMeta[this.queued * META] = frame.length;
    this.queued++;
    if (this.queued >= this.slots) this.flush();
  }
  /** Copies bytes start..end of `src` (a frame with its virtio header) into a slot, without a view of it. */
  queueFrom(src: Buffer, start: number, end: number): void {
    const len = end - start;
    if (len > this.slotSize) throw new Error(`frame of ${len} bytes exceeds the slot size ${this.slotSize}`);
    src.copy(this.tx, this.queued * this.slotSize, start, end);
    this.txMeta[this.queued * META] = len;
    this.queued++;
    if (this.queued >= this.slots) this.flush();
  }
  flush(): number {
    if (this.queued === 0) return 0;
    const n = this.raw.write(this.queued);
    this.queued = 0;
    return n;
  }
}
