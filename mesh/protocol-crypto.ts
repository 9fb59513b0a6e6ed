// Handshake primitives and frame sealing, all from node:crypto.
//
// Each side sends a hello (magic, protocol version range, password flag, a
// fresh X25519 public key). Both derive two direction keys with HKDF-SHA256
// from the X25519 secret, salted with the password's key when there is one
// (scrypt, computed once at start: a guess costs an attacker as much), bound to
// both hellos. Every later frame is sealed with ChaCha20-Poly1305 under a
// per-direction counter nonce, so a peer with another password fails on the
// very first frame, and replays or reordering fail authentication. The dialer
// proves the password first: the listener sends nothing derived from it
// before it has opened the dialer's first frame, so a stranger who connects
// learns nothing to test password guesses against offline.
import {
  scrypt,
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';

// 2: the password through scrypt, and the listener speaks only after the dialer proved it.
export const PROTOCOL_MIN = 2;
export const PROTOCOL_MAX = 2;
/** Frames before both sides are authenticated are small (the features frame is ~250 bytes). */
export const MAX_PREAUTH_FRAME = 4096;
/** What a listener sends instead of its first sealed frame when the dialer's did not open (a wrong password). */
export const AUTH_FAILED_MARKER = 0xfffffffe;
const MAGIC = Buffer.from('weft');
export const HELLO_LENGTH = MAGIC.length + 3 + 32;
const TAG_LENGTH = 16;

const X25519_SPKI = Buffer.from('302a300506032b656e032100', 'hex');
const ED25519_SPKI = Buffer.from('302a300506032b6570032100', 'hex');

export interface Hello {
  min: number;
  max: number;
  hasPassword: boolean;
  publicKey: Buffer;
  /** Set in a refusal: the responder will not talk to us for this many seconds. */
  refusedForSeconds?: number;
}

/** The password-flag value that marks a refusal instead of a hello. */
const REFUSED = 2;

/** What a peer sends a source it has penalised (repeated failed handshakes), instead of a hello. */
export function encodeRefusal(seconds: number): Buffer {
  const body = Buffer.alloc(32);
  body.writeUInt32BE(Math.max(1, Math.ceil(seconds)), 0);
  return Buffer.concat([MAGIC, Buffer.from([PROTOCOL_MIN, PROTOCOL_MAX, REFUSED]), body]);
}

export function rawPublicKey(key: KeyObject): Buffer {
  return key.export({ format: 'der', type: 'spki' }).subarray(-32);
}

export function newEphemeralKey(): { privateKey: KeyObject; publicKey: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  return { privateKey, publicKey: rawPublicKey(publicKey) };
}

export function encodeHello(h: Hello): Buffer {
  return Buffer.concat([MAGIC, Buffer.from([h.min, h.max, h.hasPassword ? 1 : 0]), h.publicKey]);
}

export function decodeHello(b: Buffer): Hello {
  if (b.length !== HELLO_LENGTH || !b.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new Error('the remote is not a weft peer (bad handshake header)');
  }
  const o = MAGIC.length;
  if (b[o + 2] === REFUSED)
    return {
      min: b[o],
      max: b[o + 1],
      hasPassword: false,
      publicKey: Buffer.alloc(32),
      refusedForSeconds: b.readUInt32BE(o + 3),
    };
  return { min: b[o], max: b[o + 1], hasPassword: b[o + 2] === 1, publicKey: Buffer.from(b.subarray(o + 3)) };
}

/** The version both speak, or an error saying why there is none. */
export function negotiateVersion(ours: Hello, theirs: Hello): number {
  const v = Math.min(ours.max, theirs.max);
  if (Math.max(ours.min, theirs.min) > v) {
    throw new Error(
      `protocol version mismatch: we speak ${ours.min}..${ours.max}, the remote ${theirs.min}..${theirs.max}`,
    );
  }
  return v;
}

export function checkPasswordFlags(ours: Hello, theirs: Hello): void {
  if (ours.hasPassword && !theirs.hasPassword)
    throw new Error('authentication failed: we have a password but the remote has none');
  if (!ours.hasPassword && theirs.hasPassword)
    throw new Error('authentication failed: the remote requires a password and we have none');
}

/**
 * The password's key (scrypt, N=2^15, r=8: 32 MiB and about 0.1-0.2 s here, once per start). The salt
 * is fixed, as every peer of a mesh must derive the same key with nothing shared but the password.
 */
export function passwordKey(password: string): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scrypt(password, 'weft mesh password v2', 32, { N: 2 ** 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 }, (err, key) =>
      err ? reject(err) : resolve(key),
    ),
  );
}

export interface SessionKeys {
  send: Buffer;
  receive: Buffer;
  /** Separate direction keys for the sleeve's UDP packets (their own counters, so never the same nonce). */
  sleeve: { send: Buffer; receive: Buffer };
}

/** Direction keys; `outbound` is whether we dialled. Both ends get mirrored keys. */
export function deriveSessionKeys(
  privateKey: KeyObject,
  remotePublic: Buffer,
  /** passwordKey(password), or null without a password. */
  passwordKey: Buffer | null,
  helloOutbound: Buffer,
  helloInbound: Buffer,
  outbound: boolean,
): SessionKeys {
  const remote = createPublicKey({ key: Buffer.concat([X25519_SPKI, remotePublic]), format: 'der', type: 'spki' });
  const shared = diffieHellman({ privateKey, publicKey: remote });
  const salt = passwordKey ?? Buffer.alloc(0);
  const info = Buffer.concat([Buffer.from('weft mesh v2'), helloOutbound, helloInbound]);
  // HKDF's output is a stream: the first 64 bytes are the same whatever the length asked for.
  const okm = Buffer.from(hkdfSync('sha256', shared, salt, info, 128));
  const outToIn = okm.subarray(0, 32);
  const inToOut = okm.subarray(32, 64);
  const sleeveOutToIn = okm.subarray(64, 96);
  const sleeveInToOut = okm.subarray(96, 128);
  return outbound
    ? { send: outToIn, receive: inToOut, sleeve: { send: sleeveOutToIn, receive: sleeveInToOut } }
    : { send: inToOut, receive: outToIn, sleeve: { send: sleeveInToOut, receive: sleeveOutToIn } };
}

function nonce(counter: bigint): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(counter, 4);
  return n;
}

/** Seals frames in one direction; the counter never repeats under one key. */
export class Sealer {
  private counter = 0n;
  constructor(private readonly key: Buffer) {}
  seal(plain: Uint8Array): Buffer {
    const c = createCipheriv('chacha20-poly1305', this.key, nonce(this.counter++), { authTagLength: TAG_LENGTH });
    const body = c.update(plain);
    c.final();
    return Buffer.concat([body, c.getAuthTag()]);
  }
}

/** Opens frames in order; throws if a frame was forged, replayed, reordered or sealed with another key. */
export class Opener {
  private counter = 0n;
  constructor(private readonly key: Buffer) {}
  open(sealed: Uint8Array): Buffer {
    if (sealed.length < TAG_LENGTH) throw new Error('sealed frame is shorter than its tag');
    const d = createDecipheriv('chacha20-poly1305', this.key, nonce(this.counter), { authTagLength: TAG_LENGTH });
    d.setAuthTag(sealed.subarray(sealed.length - TAG_LENGTH));
    const body = d.update(sealed.subarray(0, sealed.length - TAG_LENGTH));
    d.final(); // throws on a bad tag
    this.counter++;
    return body;
  }
}

// ---- the peer's static signing key, which proves the peer holds the key it presents

export function signTranscript(privateKeyPem: string, transcript: Buffer): Buffer {
  return sign(null, transcript, createPrivateKey(privateKeyPem));
}

export function verifyTranscript(publicKey: Buffer, transcript: Buffer, signature: Buffer): boolean {
  try {
    const key = createPublicKey({ key: Buffer.concat([ED25519_SPKI, publicKey]), format: 'der', type: 'spki' });
    return verify(null, transcript, key, signature);
  } catch {
    return false;
  }
}

export function transcript(helloOutbound: Buffer, helloInbound: Buffer, signerOutbound: boolean): Buffer {
  return Buffer.concat([
    Buffer.from('weft auth v2'),
    helloOutbound,
    helloInbound,
    Buffer.from([signerOutbound ? 1 : 0]),
  ]);
}
