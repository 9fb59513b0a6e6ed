// A peer name is a 48-bit number printed like a MAC address (aa:bb:cc:dd:ee:ff),
// as Weave does. We keep it as that canonical lower-case text: fixed width, so
// string order is numeric order, which the deterministic route computation needs.
import { randomBytes } from 'node:crypto';

export type PeerName = string;

const CANONICAL = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function isPeerName(s: unknown): s is PeerName {
  return typeof s === 'string' && CANONICAL.test(s);
}

/** Parses `aa:bb:cc:dd:ee:ff` or a `::`-compressed form such as `::1` or `12::34`. */
export function parsePeerName(text: string): PeerName {
  const t = text.trim().toLowerCase();
  let groups: string[];
  if (t.includes('::')) {
    const [head, tail, ...rest] = t.split('::');
    if (rest.length > 0) throw new Error(`invalid peer name "${text}": more than one "::"`);
    const h = head === '' ? [] : head.split(':');
    const tl = tail === '' ? [] : tail.split(':');
    const missing = 6 - h.length - tl.length;
    if (missing < 1) throw new Error(`invalid peer name "${text}": too many groups`);
    groups = [...h, ...Array<string>(missing).fill('0'), ...tl];
  } else {
    groups = t.split(':');
  }
  if (groups.length !== 6 || !groups.every((g) => /^[0-9a-f]{1,2}$/.test(g))) {
    throw new Error(`invalid peer name "${text}": expected six hex bytes like aa:bb:cc:dd:ee:ff`);
  }
  return groups.map((g) => g.padStart(2, '0')).join(':');
}

/** A random name with the locally-administered bit set and the multicast bit clear. */
export function randomPeerName(): PeerName {
  const b = randomBytes(6);
  b[0] = (b[0] & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const bytesCache = new Map<PeerName, Buffer>();

/** Six bytes of a name; cached, since a process sees a bounded set of names. Do not modify the result. */
export function peerNameToBytes(name: PeerName): Buffer {
  let b = bytesCache.get(name);
  if (!b) {
    b = Buffer.from(name.replaceAll(':', ''), 'hex');
    if (bytesCache.size > 100_000) bytesCache.clear();
    bytesCache.set(name, b);
  }
  return b;
}

export function peerNameFromBytes(b: Uint8Array): PeerName {
  if (b.length !== 6) throw new Error('a peer name is six bytes');
  return `${HEX[b[0]]}:${HEX[b[1]]}:${HEX[b[2]]}:${HEX[b[3]]}:${HEX[b[4]]}:${HEX[b[5]]}`;
}
