// A table of last-writer-wins registers on its own gossip channel: the policy's
// rules and the services are both this. Each id holds one register (version,
// origin peer, a value or a tombstone); of two registers the one with the higher
// version wins, then the higher origin name, then the larger content, so merging
// is commutative, associative and idempotent and every peer converges on the same
// table. Any peer may change any register; removals are tombstones, collected
// only once every member of the mesh holds them (tombstones.ts: a value removed
// must not come back from a peer that was away). Persisted in the data
// directory when given a path.
import { createHash } from 'node:crypto';
import type { Gossip, GossipData, Gossiper } from './gossip.js';
import type { MeshView } from './mesh.js';
import { pack, unpack } from './messages.js';
import { isPeerName, type PeerName } from './peer-name.js';
import { MAX_VERSION } from './peer-records.js';
import { type RegisterStamp, TombstoneCollector, type TombstoneOptions, type TombstoneStore } from './tombstones.js';

export interface Register<V> {
  id: string;
  version: number;
  origin: PeerName;
  /** null: removed. */
  value: V | null;
}

/**
 * Where a table keeps its registers between runs: the caller's (the mesh writes no files). `load` gives
 * what was saved, each item checked by `check`, and throws when that cannot be done (the caller's
 * error says which file and what to do); `save` reports its own failures and never throws.
 */
export interface RegisterStore {
  load<T>(check: (item: unknown) => T): T[];
  /** False when the write failed. */
  save(wire: unknown[]): boolean;
}

/** What one table's values are: `check` validates a value from the wire (for this id) or throws `fail`'s error. */
export interface RegisterCodec<V> {
  /** "policy entry", "service": for error messages. */
  what: string;
  check(value: unknown, id: string): V;
  fail(message: string): Error;
  maxEntries: number;
}

/** >0 when a wins over b (same id). */
export function compareRegisters<V>(a: Register<V>, b: Register<V>): number {
  if (a.version !== b.version) return a.version - b.version;
  if (a.origin !== b.origin) return a.origin > b.origin ? 1 : -1;
  const ka = JSON.stringify(a.value);
  const kb = JSON.stringify(b.value);
  return ka === kb ? 0 : ka > kb ? 1 : -1;
}

/** Merges registers into a map; returns those that changed it. */
export function mergeRegisters<V>(into: Map<string, Register<V>>, incoming: Iterable<Register<V>>): Register<V>[] {
  const changed: Register<V>[] = [];
  for (const e of incoming) {
    const cur = into.get(e.id);
    if (!cur || compareRegisters(e, cur) > 0) {
      into.set(e.id, e);
      changed.push(e);
    }
  }
  return changed;
}

/** Above the register's version and every collected one (so a value put again wins over a late tombstone). */
function nextVersion<V>(id: string, cur: Register<V> | undefined, floor: number, codec: RegisterCodec<V>): number {
  const v = Math.max(cur?.version ?? 0, floor) + 1;
  if (v > MAX_VERSION) throw codec.fail(`${codec.what} ${id} cannot change any more (its version is at the cap)`);
  return v;
}

function toWire<V>(e: Register<V>): unknown {
  return [e.id, e.version, e.origin, e.value];
}

export function registerFromWire<V>(codec: RegisterCodec<V>, w: unknown): Register<V> {
  if (!Array.isArray(w) || w.length !== 4) throw codec.fail(`${codec.what} is malformed`);
  const [id, version, origin, value] = w as unknown[];
  if (
    typeof id !== 'string' ||
    id.length > 256 ||
    typeof version !== 'number' ||
    !Number.isSafeInteger(version) ||
    version < 1
  )
    throw codec.fail(`${codec.what} is malformed`);
  // A version at the cap could never be superseded: one bad entry would stop the channel converging.
  if (version > MAX_VERSION) throw codec.fail(`${codec.what} version ${version} is above the cap of 2^52`);
  if (typeof origin !== 'string' || !isPeerName(origin)) throw codec.fail(`${codec.what} origin is malformed`);
  return { id, version, origin, value: value === null ? null : codec.check(value, id) };
}

class RegisterUpdate<V> implements GossipData {
  constructor(readonly entries: Register<V>[]) {}
  encode(): Uint8Array {
    return pack(this.entries.map(toWire));
  }
  merge(other: GossipData): GossipData {
    const m = new Map(this.entries.map((e) => [e.id, e]));
    mergeRegisters(m, (other as RegisterUpdate<V>).entries);
    return new RegisterUpdate([...m.values()]);
  }
}

export class RegisterTable<V> implements Gossiper {
  protected readonly entries = new Map<string, Register<V>>();
  private readonly channel: Gossip;
  private readonly listeners: (() => void)[] = [];
  /** The digest of the entries as they are: anti-entropy asks for it every round, changes are rare. */
  private digestCache: Uint8Array | null = null;
  private readonly tombstones: TombstoneCollector;
  /** Whether the last write to the store succeeded (tombstones are acknowledged only then). */
  private saved = true;

  constructor(
    protected readonly mesh: MeshView,
    channelName: string,
    private readonly codec: RegisterCodec<V>,
    private readonly store?: RegisterStore,
    /** Where the tombstone collector keeps its members; its timings, the peers known before it kept any. */
    gc: TombstoneOptions & { store?: TombstoneStore } = {},
  ) {
    // A store that cannot be read stops the caller with the reason: read as empty, a restarted host
    // would enforce nothing of what it had.
    if (store)
      mergeRegisters(
        this.entries,
        store.load((w) => registerFromWire(codec, w)),
      );
    this.channel = mesh.registerChannel(channelName, this);
    this.tombstones = new TombstoneCollector(
      mesh,
      channelName,
      {
        tombstones: () =>
          [...this.entries.values()]
            .filter((e) => e.value === null)
            .map((e) => ({ id: e.id, version: e.version, origin: e.origin })),
        collect: (ts) => this.collect(ts),
        origins: () => [...new Set([...this.entries.values()].map((e) => e.origin))],
        ensureSaved: () => {
          if (!this.saved) this.save();
          return this.saved;
        },
      },
      gc,
    );
  }

  stop(): void {
    this.tombstones.stop();
  }

  /** Tombstones held, members, and the members some tombstone still waits for (status). */
  tombstoneStatus(): ReturnType<TombstoneCollector['status']> {
    return this.tombstones.status();
  }

  /** `weft reset`: this peer leaves for good; the others stop waiting for it. */
  leaveMesh(): void {
    this.tombstones.leave();
  }

  /** `weft rmpeer`: the peer no longer holds back the collection of tombstones. */
  forgetMember(peer: PeerName): boolean {
    return this.tombstones.forget(peer);
  }

  private collect(ts: RegisterStamp[]): void {
    let n = 0;
    for (const t of ts) {
      const cur = this.entries.get(t.id);
      if (cur && cur.value === null && cur.version === t.version && cur.origin === t.origin)
        n += this.entries.delete(t.id) ? 1 : 0;
    }
    if (n === 0) return;
    this.digestCache = null;
    this.save();
  }

  private save(): void {
    if (this.store) this.saved = this.store.save([...this.entries.values()].map(toWire));
  }

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  /** The values in force, in id order. */
  values(): V[] {
    return [...this.entries.values()]
      .filter((e) => e.value !== null)
      .sort((a, b) => (a.id < b.id ? -1 : 1))
      .map((e) => e.value!);
  }

  get(id: string): V | null {
    return this.entries.get(id)?.value ?? null;
  }

  all(): Register<V>[] {
    return [...this.entries.values()];
  }

  /** Sets a register (a new version, from this peer). */
  put(id: string, value: V): Register<V> {
    const cur = this.entries.get(id);
    const e: Register<V> = {
      id,
      version: nextVersion(id, cur, this.tombstones.floor, this.codec),
      origin: this.mesh.name,
      value: this.codec.check(value, id),
    };
    this.apply([e]);
    return e;
  }

  /** Removes a value; false when there is none in force. */
  remove(id: string): boolean {
    const cur = this.entries.get(id);
    if (!cur || cur.value === null) return false;
    this.apply([
      { id, version: nextVersion(id, cur, this.tombstones.floor, this.codec), origin: this.mesh.name, value: null },
    ]);
    return true;
  }

  private apply(es: Register<V>[]): void {
    const changed = mergeRegisters(this.entries, es);
    if (changed.length === 0) return;
    this.changed();
    this.channel.gossipUpdate(new RegisterUpdate(changed));
  }

  private changed(): void {
    this.digestCache = null;
    // A failed write (a full disk) is the store's to report; the change is enforced all the same.
    this.save();
    this.tombstones.nudge();
    for (const fn of this.listeners) fn();
  }

  // ---- Gossiper

  gossip(): GossipData | null {
    return this.entries.size > 0 ? new RegisterUpdate([...this.entries.values()]) : null;
  }

  onGossip(update: Uint8Array): GossipData | null {
    const raw = unpack(update);
    if (!Array.isArray(raw)) throw this.codec.fail(`${this.codec.what} update is not a list`);
    if (raw.length > this.codec.maxEntries) throw this.codec.fail(`${this.codec.what} update is too large`);
    const incoming = raw.map((w) => registerFromWire(this.codec, w)); // one bad entry rejects the update whole
    if (this.entries.size + incoming.length > this.codec.maxEntries && incoming.some((e) => !this.entries.has(e.id)))
      throw this.codec.fail(`${this.codec.what} table is full`);
    const changed = mergeRegisters(
      this.entries,
      incoming.filter((e) => this.tombstones.admits(e.id, e.version, e.origin)),
    );
    if (changed.length === 0) return null;
    this.changed();
    return new RegisterUpdate(changed);
  }

  digest(): Uint8Array {
    if (this.digestCache) return this.digestCache;
    const h = createHash('sha256');
    for (const e of [...this.entries.values()].sort((a, b) => (a.id < b.id ? -1 : 1)))
      h.update(`${e.id}:${e.version}:${e.origin}:${JSON.stringify(e.value)}\n`);
    this.digestCache = h.digest();
    return this.digestCache;
  }

  compareDigest(digest: Uint8Array): { update: GossipData | null; remoteHasMore: boolean } {
    const same = Buffer.from(digest).equals(Buffer.from(this.digest()));
    return same ? { update: null, remoteHasMore: false } : { update: this.gossip(), remoteHasMore: true };
  }
}
