// The sleeve's UDP packets. Every datagram starts with an 8-byte header:
// version, kind (with a "sealed" bit), and the sending router's peer name (the
// hop, which picks the key). Kinds:
//   frames:   a message: source peer, destination peer, hops left, then Ethernet frames
//             (each with its 10-byte virtio header), so relays need no MAC knowledge;
//   fragment: part of a message too big for the path (id, index, count, bytes);
//   probe:    path MTU probe: its size (4 bytes), 1 at the sender's size in use (1 byte), zeros
//             to the size; acknowledged over the mesh (path-mtu.ts).
// A sealed message is a 64-bit counter, then ChaCha20-Poly1305 ciphertext and
// tag under the hop's sleeve key; a sliding window refuses replays. On an
// encrypted hop each fragment is sealed on its own (its id, index and count
// authenticated with it), so nothing unauthenticated is ever buffered.
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';

const VERSION = 1;
export const KIND_FRAMES = 1;
export const KIND_FRAGMENT = 2;
export const KIND_PROBE = 3;
export const SEALED = 0x80;
export const HEADER = 8;
export const FRAGMENT_HEADER = HEADER + 8;
/** Where a probe says whether it is at the sender's size in use (earlier routers leave it 0). */
export const PROBE_IN_USE = HEADER + 4;
export const MESSAGE_HEADER = 13;
/** Where in a message its hop limit is (after source and destination). */
export const HOPS_OFFSET = 12;
/** Relays a message may still take; each relay takes one, so a routing loop cannot keep it alive. */
const MAX_HOPS = 16;
/** The virtio header in front of every frame (TAP with IFF_VNET_HDR). */
export const VNET_HDR = 10;
/** The largest UDP payload over IPv4. */
export const MAX_UDP_PAYLOAD = 65507;

/** The format as the native fast path must have it too (checked against the addon before it is used). */
export const WIRE_FORMAT = {
  SLEEVE_VERSION: VERSION,
  KIND_FRAMES,
  KIND_FRAGMENT,
  MAX_HOPS,
  SLEEVE_HEADER: HEADER,
  FRAGMENT_HEADER,
  MESSAGE_HEADER,
  VNET_HDR,
  MAX_UDP_PAYLOAD,
  SEALED,
  SEAL_OVERHEAD: 8 + 16,
};
/** What sealing adds: the 64-bit counter in front, the 16-byte tag behind. */
export const SEAL_OVERHEAD = 8 + 16;
/** Where the plaintext starts in a sealed body (after the counter). */
export const SEAL_COUNTER = 8;
/** Where it ends: this far before the body's end (the tag). */
export const SEAL_TAG = 16;

/** Seals messages to one hop (this file's PacketSealer, or the addon's HopCipher). */
export interface Sealer {
  seal(plain: Buffer, aad?: Buffer): Buffer;
}
/** Opens one hop's messages: null for forged, corrupted or replayed ones. */
export interface Opener {
  open(sealed: Buffer, aad?: Buffer): Buffer | null;
}
/** IPv4 + UDP headers: what a datagram adds on the wire. */
export const IP_UDP = 28;
/** The same over IPv6. */
export const IP_UDP6 = 48;
/** The smallest path MTU assumed (IPv4's minimum reassembly size). */
export const PMTU_FLOOR = 576;
/** A message never exceeds this (a 64 KB super-frame plus headers and seal). */
export const MAX_MESSAGE = 65536 + 10 + 14 + 4 + MESSAGE_HEADER + SEAL_OVERHEAD + 64;

export interface Header {
  kind: number;
  sealed: boolean;
  hop: Buffer;
}

export function writeHeader(buf: Buffer, kind: number, sealed: boolean, hop: Buffer, at = 0): void {
  buf[at] = VERSION;
  buf[at + 1] = kind | (sealed ? SEALED : 0);
  hop.copy(buf, at + 2, 0, 6);
}

export function readHeader(buf: Buffer): Header {
  const kind = headerKind(buf, 0, buf.length);
  return { kind: kind & ~SEALED, sealed: (kind & SEALED) !== 0, hop: buf.subarray(2, 8) };
}

/** The kind byte (with the SEALED bit) of the packet at start..end of `buf`, checked; no allocation. */
export function headerKind(buf: Buffer, start: number, end: number): number {
  if (end - start < HEADER) throw new Error(`sleeve packet of ${end - start} bytes is shorter than its header`);
  if (buf[start] !== VERSION) throw new Error(`sleeve packet version ${buf[start]} is not ${VERSION}`);
  const kind = buf[start + 1] & 0x7f;
  if (kind < KIND_FRAMES || kind > KIND_PROBE) throw new Error(`unknown sleeve packet kind ${kind}`);
  return buf[start + 1];
}

/** Writes a message's header at `at`: source and destination peers (6 bytes each), hops left. */
export function writeMessageHeader(buf: Buffer, at: number, src: Buffer, dst: Buffer, hops = MAX_HOPS): void {
  src.copy(buf, at, 0, 6);
  dst.copy(buf, at + 6, 0, 6);
  buf[at + HOPS_OFFSET] = hops;
}

/** A message: source and destination peers (6 bytes each), hops left, then length-prefixed frames. */
export function encodeMessage(src: Buffer, dst: Buffer, frames: Buffer[], hops = MAX_HOPS): Buffer {
  let size = MESSAGE_HEADER;
  for (const f of frames) size += 4 + f.length;
  const out = Buffer.allocUnsafe(size);
  writeMessageHeader(out, 0, src, dst, hops);
  let o = MESSAGE_HEADER;
  for (const f of frames) {
    out.writeUInt32BE(f.length, o);
    f.copy(out, o + 4);
    o += 4 + f.length;
  }
  return out;
}

export interface Message {
  src: Buffer;
  dst: Buffer;
  hops: number;
  frames: Buffer[];
}

/**
 * Checks the message at at..end of `buf` without taking it apart: a whole header, then frames (each
 * at least a virtio header and an Ethernet header) that fill it exactly. Throws what is wrong.
 */
export function checkMessage(buf: Buffer, at: number, end: number): void {
  if (end - at < MESSAGE_HEADER) throw new Error('sleeve message is shorter than its header');
  for (let o = at + MESSAGE_HEADER; o < end;) {
    if (o + 4 > end) throw new Error('sleeve message ends inside a frame length');
    const len = buf.readUInt32BE(o);
    if (len < 10 + 14 || o + 4 + len > end) throw new Error(`sleeve frame of ${len} bytes does not fit its message`);
    o += 4 + len;
  }
}

export function decodeMessage(buf: Buffer): Message {
  checkMessage(buf, 0, buf.length);
  const frames: Buffer[] = [];
  for (let o = MESSAGE_HEADER; o < buf.length; o += 4 + buf.readUInt32BE(o))
    frames.push(buf.subarray(o + 4, o + 4 + buf.readUInt32BE(o)));
  return { src: buf.subarray(0, 6), dst: buf.subarray(6, 12), hops: buf[HOPS_OFFSET], frames };
}

function nonce(counter: number): Buffer {
  const n = Buffer.alloc(12);
  n.writeUInt32BE(Math.floor(counter / 2 ** 32), 4);
  n.writeUInt32BE(counter >>> 0, 8);
  return n;
}

/** Seals messages to one hop; the counter never repeats under the key. The reference (JavaScript) path. */
export class PacketSealer implements Sealer {
  private counter = 0;
  constructor(private readonly key: Buffer) {}
  /** `aad`: bytes sent in the clear beside the sealed ones that must not be changed (a fragment's header). */
  seal(plain: Buffer, aad?: Buffer): Buffer {
    const c = this.counter++;
    const cipher = createCipheriv('chacha20-poly1305', this.key, nonce(c), { authTagLength: 16 });
    if (aad) cipher.setAAD(aad, { plaintextLength: plain.length });
    const head = Buffer.allocUnsafe(8);
    head.writeUInt32BE(Math.floor(c / 2 ** 32), 0);
    head.writeUInt32BE(c >>> 0, 4);
    const body = cipher.update(plain);
    cipher.final();
    return Buffer.concat([head, body, cipher.getAuthTag()]);
  }
}

/** Accepts each counter once, within a window behind the highest seen (UDP reorders). */
export class ReplayWindow {
  static readonly SIZE = 2048;
  private readonly bits = new Uint32Array(ReplayWindow.SIZE / 32);
  private top = -1;
  /** True (and remembered) when `c` was not seen and is not too old. */
  accept(c: number): boolean {
    if (c > this.top) {
      // Slide: clear the bits of counters between the old top and the new one.
      const gap = Math.min(c - this.top, ReplayWindow.SIZE);
      for (let i = 1; i <= gap; i++) this.clear(this.top + i);
      this.top = c;
      this.set(c);
      return true;
    }
    if (this.top - c >= ReplayWindow.SIZE) return false;
    if (this.isSet(c)) return false;
    this.set(c);
    return true;
  }
  private idx(c: number): [number, number] {
    const b = c % ReplayWindow.SIZE;
    return [b >>> 5, 1 << (b & 31)];
  }
  private set(c: number): void {
    const [w, m] = this.idx(c);
    this.bits[w] |= m;
  }
  private clear(c: number): void {
    const [w, m] = this.idx(c);
    this.bits[w] &= ~m;
  }
  private isSet(c: number): boolean {
    const [w, m] = this.idx(c);
    return (this.bits[w] & m) !== 0;
  }
}

/** Opens messages from one hop; null for forged, corrupted or replayed ones. */
export class PacketOpener implements Opener {
  private readonly window = new ReplayWindow();
  constructor(private readonly key: Buffer) {}
  open(sealed: Buffer, aad?: Buffer): Buffer | null {
    if (sealed.length < SEAL_OVERHEAD) return null;
    const c = sealed.readUInt32BE(0) * 2 ** 32 + sealed.readUInt32BE(4);
    const d = createDecipheriv('chacha20-poly1305', this.key, nonce(c), { authTagLength: 16 });
    d.setAuthTag(sealed.subarray(sealed.length - 16));
    if (aad) d.setAAD(aad, { plaintextLength: sealed.length - SEAL_OVERHEAD });
    const body = d.update(sealed.subarray(8, sealed.length - 16));
    try {
      d.final();
    } catch {
      return null;
    }
    // Only an authentic packet may move the window.
    return this.window.accept(c) ? body : null;
  }
}

/**
 * Fragment ids: random, so that someone on the path who cannot read a hop's traffic cannot guess the
 * id of a message under way and slip a fragment of their own into it. Drawn from a pool of random
 * bytes refilled 1024 ids at a time. The top bit is clear (the addon's ids have it set).
 */
export class FragmentIds {
  private readonly pool = new Uint32Array(1024);
  private left = 0;
  next(): number {
    if (this.left === 0) {
      randomFillSync(this.pool);
      this.left = this.pool.length;
    }
    return this.pool[--this.left] & 0x7fffffff;
  }
}

interface Partial {
  parts: (Buffer | undefined)[];
  got: number;
  bytes: number;
  at: number;
}

/**
 * Puts one hop's fragmented messages back together; bounded in entries, bytes (per message and in
 * all) and age, so loss costs little and a hop cannot make us hold more than `maxBytes`.
 */
export class Reassembler {
  private readonly partial = new Map<number, Partial>();
  private bytes = 0;
  dropped = 0;
  constructor(
    private readonly maxEntries = 32,
    private readonly maxAgeMs = 2000,
    private readonly maxBytes = 8 * MAX_MESSAGE,
  ) {}
  /** The whole message once its last fragment arrives, else null. */
  add(id: number, index: number, count: number, chunk: Buffer, now = Date.now()): Buffer | null {
    if (count === 0 || index >= count || count > Math.ceil(MAX_MESSAGE / 64))
      throw new Error(`bad fragment ${index}/${count}`);
    if (chunk.length > MAX_MESSAGE) throw new Error(`fragment of ${chunk.length} bytes is larger than a message`);
    let p = this.partial.get(id);
    if (!p) {
      if (this.partial.size >= this.maxEntries) this.expire(now, true);
      p = { parts: new Array(count), got: 0, bytes: 0, at: now };
      this.partial.set(id, p);
    }
    if (p.parts.length !== count) throw new Error(`fragment count changed within message ${id}`);
    if (p.parts[index]) return null; // a duplicate
    if (p.bytes + chunk.length > MAX_MESSAGE) {
      this.drop(id, p);
      throw new Error(`message ${id} grows past ${MAX_MESSAGE} bytes`);
    }
    while (this.bytes + chunk.length > this.maxBytes && this.partial.size > 1) this.expire(now, true, id);
    if (this.bytes + chunk.length > this.maxBytes) throw new Error('reassembly is full');
    p.parts[index] = Buffer.from(chunk); // the receive buffer is reused
    p.got++;
    p.bytes += chunk.length;
    this.bytes += chunk.length;
    if (p.got < count) return null;
    this.partial.delete(id);
    this.bytes -= p.bytes;
    return Buffer.concat(p.parts as Buffer[]);
  }
  private drop(id: number, p: Partial): void {
    this.partial.delete(id);
    this.bytes -= p.bytes;
    this.dropped++;
  }
  /** Whether part of this message is here. */
  has(id: number): boolean {
    return this.partial.has(id);
  }
  /** Drops entries older than the age limit (or, when full, the oldest but `keep`). */
  expire(now = Date.now(), oldest = false, keep?: number): void {
    for (const [k, p] of this.partial) {
      if (k === keep) continue;
      if (now - p.at > this.maxAgeMs || oldest) {
        this.drop(k, p);
        if (oldest) return;
      }
    }
  }
  get size(): number {
    return this.partial.size;
  }
  /** Bytes held. */
  get held(): number {
    return this.bytes;
  }
}

/**
 * One peer's fragmented messages. They arrive in order almost always (a train is cut in order and
 * one path keeps it), so fragments are copied straight into one message buffer, with no allocation;
 * anything else goes to the hop's Reassembler, together with what the buffer had gathered of that
 * message. What add() returns is valid until the next call.
 */
export class FragmentAssembler {
  private readonly buf = Buffer.alloc(MAX_MESSAGE);
  readonly reassembler = new Reassembler();
  private id = 0;
  private count = 0;
  /** The size of every fragment but a message's last. */
  private chunk = 0;
  /** The index expected next; 0 when no message is being gathered. */
  private next = 0;
  private length = 0;

  /** Fragment `index` of `count` of message `id`, at start..end of `src`: the whole message once complete. */
  add(id: number, index: number, count: number, src: Buffer, start: number, end: number): Buffer | null {
    const size = end - start;
    // The first fragment again, of the message being gathered: a duplicate (a spill here would leave it
    // in the reassembler, to complete a second copy of the message with later duplicates).
    if (index === 0 && this.next > 0 && id === this.id) return null;
    // A message some of whose fragments came before its first is the reassembler's.
    if (index === 0 && count > 1 && size * count <= this.buf.length && !this.reassembler.has(id)) {
      if (this.next > 0) this.spill();
      src.copy(this.buf, 0, start, end);
      this.id = id;
      this.count = count;
      this.chunk = size;
      this.next = 1;
      this.length = size;
      return null;
    }
    if (
      this.next > 0 &&
      id === this.id &&
      count === this.count &&
      index === this.next &&
      (size === this.chunk || (index === count - 1 && size < this.chunk))
    ) {
      src.copy(this.buf, this.length, start, end);
      this.length += size;
      if (++this.next < count) return null;
      this.next = 0;
      return this.buf.subarray(0, this.length);
    }
    if (this.next > 0 && id === this.id) this.spill();
    return this.reassembler.add(id, index, count, src.subarray(start, end));
  }

  /** Hands what the buffer gathered to the reassembler (fragments 0..next-1, each `chunk` bytes). */
  private spill(): void {
    for (let k = 0; k < this.next; k++)
      this.reassembler.add(this.id, k, this.count, this.buf.subarray(k * this.chunk, (k + 1) * this.chunk));
    this.next = 0;
  }
}
