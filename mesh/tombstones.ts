// When a register table (register-table.ts) may forget a tombstone without the
// removed value coming back. A member that was away still holds the old value:
// had the others forgotten the removal, its gossip would bring the value back
// (a removed allow rule in force again). So a tombstone goes only once every
// *member* holds it or something newer. Members are every peer seen in the
// topology or on the acknowledgement channel, kept in the data directory, and
// forgotten only by `weft rmpeer`: a host that is down blocks collection until
// it is back and has merged the removal. Each peer says what it holds on that
// channel (one record per peer: the tombstones it holds, those it collected
// lately, the highest version it ever collected (the floor), and the members it
// knows, so that a peer met by one is a member for all). A tombstone
// held everywhere for `delayMs` (so that updates still in flight have arrived)
// is collected; for `retainMs` after that, registers of that id at or below it
// are refused. A value put again starts above every floor known, so it wins
// over a tombstone that a peer away all that time still gossips.
import type { MeshView } from './mesh.js';
import { type EntryCodec, MAX_RECORD_ENTRIES, MAX_VERSION, type PeerRecord, PeerRecords } from './peer-records.js';
import { isPeerName, type PeerName } from './peer-name.js';

export interface TombstoneTimings {
  /** How often a peer checks what it may collect and republishes what it holds. */
  intervalMs: number;
  /** How long a tombstone must be held by every member before it is collected. */
  delayMs: number;
  /** How long a collected tombstone still refuses registers at or below it. */
  retainMs: number;
}

/** For the mesh's default gossip interval (30 s): collected a minute after every member holds it. */
const defaultTombstoneTimings: TombstoneTimings = tombstoneTimings(30_000);

/**
 * Timings for a mesh whose anti-entropy runs every `gossipIntervalMs`: a tombstone waits two rounds
 * once held everywhere, so an update still on its way has arrived; refusals last an hour at least.
 */
export function tombstoneTimings(gossipIntervalMs: number): TombstoneTimings {
  return {
    intervalMs: Math.min(5_000, gossipIntervalMs),
    delayMs: 2 * gossipIntervalMs,
    retainMs: Math.max(3_600_000, 120 * gossipIntervalMs),
  };
}

/** What the collector keeps between runs: a list of the floor (a number), member names, and ["forgotten", name]. */
export interface TombstoneStore {
  load<T>(check: (item: unknown) => T): T[];
  save(list: unknown[]): void;
}

/** The table whose tombstones are collected. */
export interface TombstoneHolder {
  tombstones(): { id: string; version: number }[];
  /** Forgets these tombstones (each only if it is still that version). */
  collect(tombstones: { id: string; version: number }[]): void;
}

const enum AckKind {
  Held = 0,
  Collected = 1,
  Floor = 2,
  /** The record of a peer removed by `weft rmpeer`: no longer a member. */
  Forgotten = 3,
  /** A member this peer knows of (the id is its name). */
  Member = 4,
}

interface Ack {
  id: string;
  version: number;
  kind: AckKind;
}

/** The highest floor taken from a peer: half the version space stays for changes after it. */
const FLOOR_CAP = MAX_VERSION / 2;

const ackCodec: EntryCodec<Ack> = {
  toWire: (a) => [a.id, a.version, a.kind],
  fromWire(w) {
    if (!Array.isArray(w) || w.length !== 3) throw new Error('tombstone acknowledgement is malformed');
    const [id, version, kind] = w as unknown[];
    if (
      typeof id !== 'string' ||
      id.length > 256 ||
      !Number.isSafeInteger(version) ||
      (version as number) < 0 ||
      (version as number) > MAX_VERSION ||
      !(kind === 0 || kind === 1 || kind === 2 || kind === 3 || kind === 4) ||
      (kind === 4 && !isPeerName(id))
    )
      throw new Error('tombstone acknowledgement is malformed');
    // Every put starts above the floor: one near the cap would leave no versions to change anything with.
    if (kind === 2 && (version as number) > FLOOR_CAP)
      throw new Error(`tombstone floor ${version as number} is above 2^51`);
    return { id, version: version as number, kind: kind as AckKind };
  },
  key: (a) => `${a.kind}:${a.version}:${a.id}`,
};

/**
 * More members than any mesh has: past it (members listed by a peer gone wrong), nothing is collected,
 * which is safe, and the table stays as it would without collection.
 */
const MAX_MEMBERS = 10_000;

/** Records of peers that left the topology: kept this long (a member that is down may still count its acknowledgements). */
const ACK_GRACE_MS = 10 * 60_000;

/** What one peer's record says, read once per record (records are never changed in place). */
interface RecordSummary {
  /** id -> the highest version held or collected. */
  acks: Map<string, number>;
  floor: number;
  members: PeerName[];
  forgotten: boolean;
}

const summaries = new WeakMap<PeerRecord<Ack>, RecordSummary>();
function summary(r: PeerRecord<Ack>): RecordSummary {
  let sum = summaries.get(r);
  if (!sum) {
    sum = { acks: new Map(), floor: 0, members: [], forgotten: false };
    for (const a of r.entries) {
      if (a.kind === AckKind.Held || a.kind === AckKind.Collected)
        sum.acks.set(a.id, Math.max(sum.acks.get(a.id) ?? 0, a.version));
      else if (a.kind === AckKind.Floor) sum.floor = Math.max(sum.floor, a.version);
      else if (a.kind === AckKind.Member) sum.members.push(a.id as PeerName);
      else sum.forgotten = true;
    }
    summaries.set(r, sum);
  }
  return sum;
}

const forgotten = (r: PeerRecord<Ack> | undefined): boolean => (r ? summary(r).forgotten : false);

export class TombstoneCollector {
  private readonly acks: PeerRecords<Ack>;
  private readonly members = new Set<PeerName>();
  /** Removed by `weft rmpeer` (here or anywhere): not taken as members again unless reachable. */
  private readonly forgottenPeers = new Set<PeerName>();
  /** The highest version this peer ever collected. */
  private ownFloor = 0;
  private readonly collected = new Map<string, { version: number; at: number }>();
  /** Tombstones held by every member, since when (at that version). */
  private readonly stableSince = new Map<string, { version: number; since: number }>();
  private published = '';
  private readonly timer: NodeJS.Timeout;
  private nudged: NodeJS.Timeout | null = null;
  private readonly timings: TombstoneTimings;
  private overfull = false;
  private left = false;

  constructor(
    private readonly mesh: MeshView,
    channelName: string,
    private readonly holder: TombstoneHolder,
    private readonly store?: TombstoneStore,
    timings: Partial<TombstoneTimings> = {},
  ) {
    this.timings = { ...defaultTombstoneTimings, ...timings };
    for (const item of store?.load(checkStoreItem) ?? []) {
      if (typeof item === 'number') this.ownFloor = Math.max(this.ownFloor, item);
      else if (typeof item === 'string') this.members.add(item);
      else this.forgottenPeers.add(item[1]);
    }
    this.members.add(mesh.name);
    this.acks = new PeerRecords(mesh, `${channelName}-acks`, ackCodec, ACK_GRACE_MS);
    this.acks.onChange(() => this.noteMembers());
    mesh.on('topology', () => this.noteMembers());
    // A neighbour is a member before anything is gossiped over its connection.
    mesh.on('connection-added', () => this.noteMembers());
    this.noteMembers();
    this.timer = setInterval(() => this.pass(), this.timings.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    if (this.nudged) clearTimeout(this.nudged);
    this.acks.stop();
  }

  /** The version a new register must exceed: the highest collected anywhere that this peer knows of. */
  get floor(): number {
    let f = this.ownFloor;
    for (const r of this.acks.records.values()) f = Math.max(f, summary(r).floor);
    return f;
  }

  /** Whether a register from the wire may be merged: not one at or below a tombstone collected lately. */
  admits(id: string, version: number): boolean {
    const c = this.collected.get(id);
    return !c || version > c.version;
  }

  /** The table changed: say soon what this peer holds now. */
  nudge(): void {
    if (this.nudged) return;
    this.nudged = setTimeout(() => {
      this.nudged = null;
      this.publish();
    }, 0);
    this.nudged.unref();
  }

  /** `weft rmpeer`: the peer stops being a member, here and (gossiped) everywhere. Returns whether it was one. */
  forget(peer: PeerName): boolean {
    if (peer === this.mesh.name || !this.members.has(peer)) return false;
    this.members.delete(peer);
    this.forgottenPeers.add(peer);
    this.acks.evict(peer, [{ id: '', version: 0, kind: AckKind.Forgotten }]);
    this.save();
    this.nudge();
    return true;
  }

  /**
   * `weft reset`: this peer leaves for good. Its record becomes the rmpeer marker, so the others stop
   * counting it as a member once it is gone; it collects and acknowledges nothing more.
   */
  leave(): void {
    this.left = true;
    this.acks.setLocal([{ id: '', version: 0, kind: AckKind.Forgotten }]);
  }

  /** Tombstones held, members, those some tombstone still waits for, and the floor new versions start above. */
  status(): { tombstones: number; members: number; waitingFor: PeerName[]; floor: number } {
    const tombs = this.holder.tombstones();
    const waitingFor = new Set<PeerName>();
    for (const p of this.members) {
      if (p === this.mesh.name) continue;
      const r = this.acks.records.get(p);
      const m = r && summary(r).acks;
      if (tombs.some((t) => (m?.get(t.id) ?? -1) < t.version)) waitingFor.add(p);
    }
    return {
      tombstones: tombs.length,
      members: this.members.size,
      waitingFor: [...waitingFor].sort(),
      floor: this.floor,
    };
  }

  private noteMembers(): void {
    let changed = false;
    const add = (p: PeerName) => {
      if (this.members.has(p)) return;
      // A peer removed by rmpeer stays out, unless it is back.
      if (this.forgottenPeers.has(p) || forgotten(this.acks.records.get(p))) {
        if (!this.mesh.isReachable(p)) return;
        this.forgottenPeers.delete(p);
      }
      if (this.members.size >= MAX_MEMBERS) {
        this.overfull = true;
        return;
      }
      this.members.add(p);
      changed = true;
    };
    for (const [p, r] of this.acks.records)
      if (forgotten(r) && p !== this.mesh.name && !this.mesh.isReachable(p) && !this.forgottenPeers.has(p)) {
        this.forgottenPeers.add(p);
        this.members.delete(p);
        changed = true;
      }
    for (const p of this.mesh.peers()) add(p.name);
    for (const n of this.mesh.neighbours(true)) add(n.name);
    for (const [p, r] of this.acks.records) {
      if (forgotten(r)) continue;
      add(p);
      for (const m of summary(r).members) add(m);
    }
    if (changed) {
      this.save();
      this.nudge();
    }
  }

  private save(): void {
    this.store?.save([
      this.ownFloor,
      ...[...this.members].sort(),
      ...[...this.forgottenPeers].sort().map((p) => ['forgotten', p]),
    ]);
  }

  private publish(tombs = this.holder.tombstones()): void {
    if (this.left) return;
    // Room for the floor and the members (a record holds at most MAX_RECORD_ENTRIES).
    const room = MAX_RECORD_ENTRIES - 1 - this.members.size;
    const entries: Ack[] = tombs.slice(0, room).map((t) => ({ ...t, kind: AckKind.Held }));
    for (const [id, c] of this.collected) {
      if (entries.length >= room) break;
      entries.push({ id, version: c.version, kind: AckKind.Collected });
    }
    if (this.ownFloor > 0) entries.push({ id: '', version: this.ownFloor, kind: AckKind.Floor });
    for (const p of this.members) entries.push({ id: p, version: 0, kind: AckKind.Member });
    const key = JSON.stringify(entries.map(ackCodec.key).sort());
    if (key === this.published) return;
    this.published = key;
    this.acks.setLocal(entries);
  }

  /** Collects what every member holds, for long enough; republishes. Public for tests. */
  pass(now = Date.now()): void {
    if (this.left) return;
    for (const [id, c] of this.collected) if (now - c.at >= this.timings.retainMs) this.collected.delete(id);
    const tombs = this.holder.tombstones();
    const others: Map<string, number>[] = [];
    let everyone = !this.overfull;
    for (const p of this.members) {
      if (p === this.mesh.name) continue;
      const r = this.acks.records.get(p);
      if (!r) everyone = false;
      else others.push(summary(r).acks);
    }
    const ready: { id: string; version: number }[] = [];
    const held = new Set<string>();
    for (const t of tombs) {
      held.add(t.id);
      if (!everyone || others.some((m) => (m.get(t.id) ?? -1) < t.version)) {
        this.stableSince.delete(t.id);
        continue;
      }
      const s = this.stableSince.get(t.id);
      if (!s || s.version !== t.version) this.stableSince.set(t.id, { version: t.version, since: now });
      else if (now - s.since >= this.timings.delayMs) ready.push(t);
    }
    for (const id of this.stableSince.keys()) if (!held.has(id)) this.stableSince.delete(id);
    if (ready.length > 0) {
      for (const t of ready) {
        this.collected.set(t.id, { version: t.version, at: now });
        this.stableSince.delete(t.id);
        this.ownFloor = Math.max(this.ownFloor, t.version);
      }
      this.holder.collect(ready);
      this.save();
    }
    this.publish(ready.length > 0 ? undefined : tombs);
  }
}

function checkStoreItem(item: unknown): number | PeerName | ['forgotten', PeerName] {
  if (typeof item === 'number' && Number.isSafeInteger(item) && item >= 0 && item <= MAX_VERSION) return item;
  if (isPeerName(item)) return item;
  if (Array.isArray(item) && item.length === 2 && item[0] === 'forgotten' && isPeerName(item[1]))
    return ['forgotten', item[1]];
  throw new Error('neither a version, a peer name nor a forgotten peer');
}
