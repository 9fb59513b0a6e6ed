// The topology CRDT: one entry per peer, written only by that peer, merged by
// (version, uid, content). Any two states merge to the same result in any order.
import { peerNameFromBytes, peerNameToBytes, type PeerName } from './peer-name.js';

interface ConnectionSummary {
  peer: PeerName;
  /** Remote TCP address as the owning peer sees it ("ip:port"). */
  addr: string;
  outbound: boolean;
  established: boolean;
}

export interface PeerEntry {
  name: PeerName;
  nickname: string;
  /** Incarnation id: 16 hex digits, new on every start. */
  uid: string;
  version: number;
  /** The peer's mesh listen port, so others can dial it (discovery). */
  port: number;
  connections: ConnectionSummary[];
}

/** Compact per-peer summary used by anti-entropy. */
export type DigestItem = [name: PeerName, version: number, uid: string];

const MAX_CONNECTIONS_PER_ENTRY = 10_000;
const MAX_NICKNAME = 255;

/** Order-independent: the same connections listed in another order are the same content. */
function contentKey(e: PeerEntry): string {
  const conns = e.connections.map((c) => JSON.stringify([c.peer, c.addr, c.outbound, c.established])).sort();
  return JSON.stringify([e.nickname, e.port, conns]);
}

function sameContent(a: PeerEntry, b: PeerEntry): boolean {
  if (a.nickname !== b.nickname || a.port !== b.port || a.connections.length !== b.connections.length) return false;
  for (let i = 0; i < a.connections.length; i++) {
    const x = a.connections[i];
    const y = b.connections[i];
    if (x.peer !== y.peer || x.addr !== y.addr || x.outbound !== y.outbound || x.established !== y.established)
      return false;
  }
  return true;
}

/** >0 when a supersedes b. Total order on entries of one peer, so merge is a join. */
export function compareEntries(a: PeerEntry, b: PeerEntry): number {
  if (a.version !== b.version) return a.version - b.version;
  if (a.uid !== b.uid) return a.uid > b.uid ? 1 : -1;
  // Equal (version, uid) is the same entry in practice; the content order only breaks impossible ties.
  if (a === b || sameContent(a, b)) return 0;
  const ka = contentKey(a);
  const kb = contentKey(b);
  return ka === kb ? 0 : ka > kb ? 1 : -1;
}

function compareDigest(version: number, uid: string, e: PeerEntry): number {
  if (version !== e.version) return version - e.version;
  if (uid !== e.uid) return uid > e.uid ? 1 : -1;
  return 0;
}

export class Topology {
  readonly entries = new Map<PeerName, PeerEntry>();
  /**
   * What we last held of peers we removed as unreachable: copies no newer than
   * this are stale (a neighbour that has not noticed yet) and are ignored, so
   * two peers cannot hand a dead peer back and forth.
   */
  readonly removed = new Map<PeerName, { version: number; uid: string; at: number }>();

  get(name: PeerName): PeerEntry | undefined {
    return this.entries.get(name);
  }

  /** Merges entries; returns those that improved our state (the delta to pass on). */
  merge(incoming: Iterable<PeerEntry>): PeerEntry[] {
    const improved: PeerEntry[] = [];
    for (const e of incoming) {
      const gone = this.removed.get(e.name);
      if (gone) {
        // Same incarnation, not newer: a stale copy. A new uid is a restarted peer: welcome back.
        if (e.uid === gone.uid && e.version <= gone.version) continue;
        this.removed.delete(e.name);
      }
      const cur = this.entries.get(e.name);
      if (!cur || compareEntries(e, cur) > 0) {
        this.entries.set(e.name, e);
        improved.push(e);
      }
    }
    return improved;
  }

  /** Replaces an entry unconditionally: only for the local peer's own entry. */
  setLocal(e: PeerEntry): void {
    this.entries.set(e.name, e);
  }

  /** Removes a peer, remembering its entry's version so stale copies stay out. */
  remove(name: PeerName, now = Date.now()): boolean {
    const e = this.entries.get(name);
    if (!e) return false;
    this.removed.set(name, { version: e.version, uid: e.uid, at: now });
    return this.entries.delete(name);
  }

  /** Forgets removal records older than maxAgeMs. */
  expireRemoved(maxAgeMs: number, now = Date.now()): void {
    for (const [name, r] of this.removed) if (now - r.at > maxAgeMs) this.removed.delete(name);
  }

  all(): PeerEntry[] {
    return [...this.entries.values()];
  }

  digest(): DigestItem[] {
    return this.all().map((e) => [e.name, e.version, e.uid]);
  }

  /** Entries we hold that the digest's owner lacks, and whether it holds something we lack. */
  compare(digest: DigestItem[]): { newer: PeerEntry[]; remoteHasMore: boolean } {
    const seen = new Set<PeerName>();
    const newer: PeerEntry[] = [];
    let remoteHasMore = false;
    for (const [name, version, uid] of digest) {
      seen.add(name);
      const ours = this.entries.get(name);
      if (!ours) {
        remoteHasMore = true;
        continue;
      }
      const c = compareDigest(version, uid, ours);
      if (c < 0) newer.push(ours);
      else if (c > 0) remoteHasMore = true;
    }
    for (const e of this.entries.values()) if (!seen.has(e.name)) newer.push(e);
    return { newer, remoteHasMore };
  }

  /** Peers reachable from `from` following the connections each peer reports. */
  reachableFrom(from: PeerName): Set<PeerName> {
    const seen = new Set<PeerName>([from]);
    const queue = [from];
    while (queue.length > 0) {
      const cur = this.entries.get(queue.shift()!);
      if (!cur) continue;
      for (const c of cur.connections) {
        if (!seen.has(c.peer)) {
          seen.add(c.peer);
          queue.push(c.peer);
        }
      }
    }
    return seen;
  }

  /** Drops entries of peers no longer reachable from `self`; returns their names. */
  gc(self: PeerName): PeerName[] {
    const reachable = this.reachableFrom(self);
    const gone: PeerName[] = [];
    for (const name of this.entries.keys()) {
      if (!reachable.has(name)) gone.push(name);
    }
    for (const name of gone) this.remove(name);
    return gone;
  }

  /** Canonical, order-independent view for comparing states. */
  snapshot(): PeerEntry[] {
    return this.all()
      .map((e) => ({
        ...e,
        connections: [...e.connections].sort((a, b) => (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0)),
      }))
      .sort((a, b) => (a.name < b.name ? -1 : 1));
  }
}

// ---- validation of entries arriving from the network ----

function isUint(n: unknown, max = Number.MAX_SAFE_INTEGER): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= max;
}

const OUTBOUND = 1;
const ESTABLISHED = 2;

function wireName(v: unknown, what: string): PeerName {
  if (!(v instanceof Uint8Array) || v.length !== 6) throw new Error(`${what} has an invalid peer name`);
  return peerNameFromBytes(v);
}

function validateConnection(c: unknown): ConnectionSummary {
  if (!Array.isArray(c) || c.length !== 3) throw new Error('connection summary is not a 3-tuple');
  const [peer, addr, flags] = c as unknown[];
  if (typeof addr !== 'string' || addr.length > 64) throw new Error('connection summary has an invalid address');
  if (!isUint(flags, 3)) throw new Error('connection summary has invalid flags');
  return {
    peer: wireName(peer, 'connection summary'),
    addr,
    outbound: (flags & OUTBOUND) !== 0,
    established: (flags & ESTABLISHED) !== 0,
  };
}

/** Entries travel as tuples with binary names, to keep topology gossip small. */
export function entryToWire(e: PeerEntry): unknown[] {
  return [
    peerNameToBytes(e.name),
    e.nickname,
    e.uid,
    e.version,
    e.port,
    e.connections.map((c) => [
      peerNameToBytes(c.peer),
      c.addr,
      (c.outbound ? OUTBOUND : 0) | (c.established ? ESTABLISHED : 0),
    ]),
  ];
}

export function entryFromWire(w: unknown): PeerEntry {
  if (!Array.isArray(w) || w.length !== 6) throw new Error('peer entry is not a 6-tuple');
  const [rawName, nickname, uid, version, port, conns] = w as unknown[];
  const name = wireName(rawName, 'peer entry');
  if (typeof nickname !== 'string' || nickname.length > MAX_NICKNAME)
    throw new Error('peer entry has an invalid nickname');
  if (typeof uid !== 'string' || !/^[0-9a-f]{16}$/.test(uid)) throw new Error('peer entry has an invalid uid');
  if (!isUint(version)) throw new Error('peer entry has an invalid version');
  if (!isUint(port, 65535)) throw new Error('peer entry has an invalid port');
  if (!Array.isArray(conns) || conns.length > MAX_CONNECTIONS_PER_ENTRY)
    throw new Error('peer entry has an invalid connection list');
  return { name, nickname, uid, version, port, connections: conns.map(validateConnection) };
}
