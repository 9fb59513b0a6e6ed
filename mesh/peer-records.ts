// A gossip channel of per-peer records: each peer owns one record (a list of
// entries with a version) and only it changes that record. Records merge per
// peer by (version, content), a total order, so the merge is commutative,
// associative and idempotent; a removal is a newer record without the entry.
// A restarted peer supersedes its earlier incarnation's record; records of
// peers that left the topology are kept for a grace period (their hosts may
// still work without their router) and then dropped.
// The endpoint table (datapath) and the DNS name table are both this.
import { createHash } from 'node:crypto';
import type { Gossip, GossipData, Gossiper } from './gossip.js';
import type { MeshView } from './mesh.js';
import { pack, unpack } from './messages.js';
import { isPeerName, type PeerName } from './peer-name.js';
import { every, type Tick } from '../lib/ticker.js';

export interface PeerRecord<T> {
  peer: PeerName;
  version: number;
  entries: T[];
}

/** How one channel's entries travel and compare. fromWire throws on anything malformed. */
export interface EntryCodec<T> {
  toWire(e: T): unknown;
  fromWire(w: unknown): T;
  /** A canonical text of the entry, for the content order. */
  key(e: T): string;
}

/** The most records in an update, and entries in a record. */
const MAX_RECORD_ENTRIES = 100_000;

/**
 * The highest version any gossiped record or register may carry (2^52). Versions grow by one per
 * change, so no honest peer gets near it; a peer that sends one at the cap could never be superseded
 * (and past 2^53 versions stop being distinct numbers), so such records are refused.
 */
export const MAX_VERSION = 2 ** 52;

/** How long the version of a dropped record is remembered. */
const DROPPED_MEMORY_MS = 10 * 60_000;

/** Bytes of a record's content hash in a digest. */
const HASH_BYTES = 16;

/**
 * The canonical text of a record's entries, kept per record object: records are never changed in
 * place (a change is a new record), and a record of 10,000 entries is compared often.
 */
const contentKeys = new WeakMap<PeerRecord<unknown>, string>();
function contentKey<T>(codec: EntryCodec<T>, r: PeerRecord<T>): string {
  let k = contentKeys.get(r);
  if (k === undefined) {
    k = JSON.stringify(r.entries.map((e) => codec.key(e)).sort());
    contentKeys.set(r, k);
  }
  return k;
}

const contentHashes = new WeakMap<PeerRecord<unknown>, Uint8Array>();
function contentHash<T>(codec: EntryCodec<T>, r: PeerRecord<T>): Uint8Array {
  let h = contentHashes.get(r);
  if (!h) {
    h = createHash('sha256').update(contentKey(codec, r)).digest().subarray(0, HASH_BYTES);
    contentHashes.set(r, h);
  }
  return h;
}

/** >0 when a supersedes b (records of one peer). */
export function comparePeerRecords<T>(codec: EntryCodec<T>, a: PeerRecord<T>, b: PeerRecord<T>): number {
  if (a.version !== b.version) return a.version - b.version;
  const ka = contentKey(codec, a);
  const kb = contentKey(codec, b);
  return ka === kb ? 0 : ka > kb ? 1 : -1;
}

/** One record as a digest names it: whose, which version, a hash of its content. */
interface DigestItem {
  peer: PeerName;
  version: number;
  hash: Buffer;
}

function decodeDigest(bytes: Uint8Array): DigestItem[] {
  const v = unpack(bytes);
  if (!Array.isArray(v) || v.length > MAX_RECORD_ENTRIES) throw new Error('record digest is not a list');
  return v.map((w) => {
    if (!Array.isArray(w) || w.length !== 3) throw new Error('record digest item is malformed');
    const [peer, version, hash] = w as unknown[];
    if (
      !isPeerName(peer) ||
      !Number.isSafeInteger(version) ||
      (version as number) < 0 ||
      (version as number) > MAX_VERSION ||
      !(hash instanceof Uint8Array) ||
      hash.length !== HASH_BYTES
    ) {
      throw new Error('record digest item is malformed');
    }
    return { peer, version: version as number, hash: Buffer.from(hash) };
  });
}

/** Merges records into a map; returns those that improved it. */
export function mergePeerRecords<T>(
  codec: EntryCodec<T>,
  into: Map<PeerName, PeerRecord<T>>,
  incoming: Iterable<PeerRecord<T>>,
): PeerRecord<T>[] {
  const improved: PeerRecord<T>[] = [];
  for (const r of incoming) {
    const cur = into.get(r.peer);
    if (!cur || comparePeerRecords(codec, r, cur) > 0) {
      into.set(r.peer, r);
      improved.push(r);
    }
  }
  return improved;
}

class RecordsUpdate<T> implements GossipData {
  constructor(
    private readonly codec: EntryCodec<T>,
    readonly records: PeerRecord<T>[],
  ) {}
  encode(): Uint8Array {
    return pack(this.records.map((r) => [r.peer, r.version, r.entries.map((e) => this.codec.toWire(e))]));
  }
  merge(other: GossipData): GossipData {
    const m = new Map(this.records.map((r) => [r.peer, r]));
    mergePeerRecords(this.codec, m, (other as RecordsUpdate<T>).records);
    return new RecordsUpdate(this.codec, [...m.values()]);
  }
}

function decodePeerRecords<T>(codec: EntryCodec<T>, bytes: Uint8Array): PeerRecord<T>[] {
  const v = unpack(bytes);
  if (!Array.isArray(v) || v.length > MAX_RECORD_ENTRIES) throw new Error('record update is not a list');
  return v.map((w) => {
    if (!Array.isArray(w) || w.length !== 3) throw new Error('record is malformed');
    const [peer, version, entries] = w as unknown[];
    if (
      !isPeerName(peer) ||
      !Number.isSafeInteger(version) ||
      (version as number) < 0 ||
      !Array.isArray(entries) ||
      entries.length > MAX_RECORD_ENTRIES
    ) {
      throw new Error('record is malformed');
    }
    if ((version as number) > MAX_VERSION)
      throw new Error(`record version ${version as number} is above the cap of 2^52`);
    return { peer, version: version as number, entries: entries.map((e) => codec.fromWire(e)) };
  });
}

export class PeerRecords<T> implements Gossiper {
  readonly records = new Map<PeerName, PeerRecord<T>>();
  private readonly channel: Gossip;
  private version = 0;
  private readonly listeners: (() => void)[] = [];
  private readonly goneAt = new Map<PeerName, number>();
  /**
   * Records dropped for peers not in the topology, by the version dropped: the same record coming
   * back from a neighbour that has not dropped it yet is not taken again (else two peers could pass
   * a phantom's record back and forth for ever). Forgotten once the peer is in the topology.
   */
  private readonly dropped = new Map<PeerName, { version: number; at: number }>();
  private readonly timer: Tick;

  constructor(
    protected readonly mesh: MeshView,
    channelName: string,
    private readonly codec: EntryCodec<T>,
    private readonly graceMs: number,
  ) {
    this.channel = mesh.registerChannel(channelName, this);
    this.records.set(mesh.name, { peer: mesh.name, version: 0, entries: [] });
    mesh.on('peers-gone', (gone: PeerName[]) => {
      for (const p of gone) if (this.records.has(p)) this.goneAt.set(p, Date.now());
    });
    this.timer = every(Math.min(5000, graceMs), () => this.expire());
  }

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  private expire(): void {
    const now = Date.now();
    let changed = false;
    // Records of peers that are not in the topology at all (gone before we met them, or never
    // there: a peer may gossip records for names nobody has) start their grace period now.
    for (const p of this.records.keys())
      if (p !== this.mesh.name && !this.goneAt.has(p) && !this.mesh.inTopology(p)) this.goneAt.set(p, now);
    for (const [p, at] of this.goneAt) {
      if (this.mesh.inTopology(p)) {
        this.goneAt.delete(p); // it came back
      } else if (now - at >= this.graceMs) {
        this.goneAt.delete(p);
        const r = this.records.get(p);
        if (r) this.dropped.set(p, { version: r.version, at: now });
        changed = this.records.delete(p) || changed;
      }
    }
    for (const [p, d] of this.dropped)
      if (this.mesh.inTopology(p) || now - d.at > DROPPED_MEMORY_MS) this.dropped.delete(p);
    if (changed) this.changed();
  }

  stop(): void {
    this.timer.stop();
  }

  get local(): T[] {
    return this.records.get(this.mesh.name)!.entries;
  }

  /**
   * A peer removed for good (weft rmpeer): its record is replaced at once, everywhere, by a newer
   * empty one. Should the peer come back after all, it supersedes this as it supersedes any record
   * of an earlier incarnation. `entries` may say why (a marker of the channel's own); with them, a
   * record is written even for a peer that had none here. Returns whether it had entries.
   */
  evict(peer: PeerName, entries: T[] = []): boolean {
    if (peer === this.mesh.name) return false;
    const cur = this.records.get(peer);
    if (!cur && entries.length === 0) return false;
    // Above a record dropped here, which neighbours would otherwise take for that one coming back.
    const version = Math.max(cur?.version ?? 0, this.dropped.get(peer)?.version ?? 0) + 1;
    if (version > MAX_VERSION) return false;
    const rec = { peer, version, entries };
    this.records.set(peer, rec);
    this.channel.gossipUpdate(new RecordsUpdate(this.codec, [rec]));
    this.changed();
    return (cur?.entries.length ?? 0) > 0;
  }

  /** Replaces this peer's entries and announces them. */
  setLocal(entries: T[]): void {
    // Start above any version of ours others may still hold from before a restart.
    this.version = Math.max(this.version, this.records.get(this.mesh.name)?.version ?? 0) + 1;
    const rec = { peer: this.mesh.name, version: this.version, entries };
    this.records.set(this.mesh.name, rec);
    this.channel.gossipUpdate(new RecordsUpdate(this.codec, [rec]));
    this.changed();
  }

  gossip(): GossipData | null {
    return new RecordsUpdate(this.codec, [...this.records.values()]);
  }

  /**
   * Anti-entropy compares (peer, version, content hash) per record, so a neighbour is sent only
   * the records it lacks: a host's record can hold thousands of addresses, and sending every
   * record every round cost both routers more than all else they did while idle.
   */
  digest(): Uint8Array {
    return pack([...this.records.values()].map((r) => [r.peer, r.version, contentHash(this.codec, r)]));
  }

  compareDigest(digest: Uint8Array): { update: GossipData | null; remoteHasMore: boolean } {
    const theirs = new Map(decodeDigest(digest).map((d) => [d.peer, d]));
    const send: PeerRecord<T>[] = [];
    let remoteHasMore = false;
    for (const r of this.records.values()) {
      const t = theirs.get(r.peer);
      if (!t || r.version > t.version) send.push(r);
      else if (r.version < t.version) remoteHasMore = true;
      else if (!t.hash.equals(contentHash(this.codec, r))) {
        // Same version, different content (two incarnations of a peer): each side sends its own
        // and both keep the greater, as merge does.
        send.push(r);
        remoteHasMore = true;
      }
    }
    for (const t of theirs.values()) {
      if (this.records.has(t.peer)) continue;
      const d = this.dropped.get(t.peer);
      if (d && t.version <= d.version && !this.mesh.inTopology(t.peer)) continue; // would be refused
      remoteHasMore = true;
    }
    return { update: send.length > 0 ? new RecordsUpdate(this.codec, send) : null, remoteHasMore };
  }

  onGossip(update: Uint8Array): GossipData | null {
    const others: PeerRecord<T>[] = [];
    for (const r of decodePeerRecords(this.codec, update)) {
      if (r.peer !== this.mesh.name) {
        const d = this.dropped.get(r.peer);
        if (d && r.version <= d.version && !this.mesh.inTopology(r.peer)) continue;
        others.push(r);
      } else if (comparePeerRecords(this.codec, r, this.records.get(this.mesh.name)!) > 0) {
        // An earlier incarnation's record, newer than ours: supersede it. (Our own record echoed
        // back by anti-entropy is not newer, and must not bump the version: every peer would then
        // see a change, and re-sync, on every gossip round.)
        this.version = r.version;
        this.setLocal(this.local);
      }
    }
    const improved = mergePeerRecords(this.codec, this.records, others);
    for (const r of improved) this.goneAt.delete(r.peer);
    if (improved.length === 0) return null;
    this.changed();
    return new RecordsUpdate(this.codec, improved);
  }

  /** Every entry with the peer it belongs to. */
  all(): (T & { peer: PeerName })[] {
    return [...this.records.values()].flatMap((r) => r.entries.map((e) => ({ ...e, peer: r.peer })));
  }
}
