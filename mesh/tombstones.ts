// When a register table (register-table.ts) may forget a tombstone without the
// removed value coming back. A member that was away still holds the old value:
// had the others forgotten the removal, its gossip would bring the value back
// (a removed allow rule in force again). So a tombstone goes only once every
// *member* holds it or something newer. Members are every peer seen in the
// topology or on the acknowledgement channel, kept in the data directory, and
// forgotten only by `weft rmpeer`: a host that is down blocks collection until
// it is back and has merged the removal. Each peer says what it holds on that
// channel (one record per peer: the tombstones it holds, those it collected
// lately, the highest version it ever collected (the floor), the members it
// knows that are not reachable, so that a peer met by one is a member for
// all, and the peers removed by rmpeer). A tombstone
// held everywhere for `delayMs` (so that updates still in flight have arrived)
// is collected; for `retainMs` after that, registers of that id at or below it
// are refused. A value put again starts above every floor known, so it wins
// over a tombstone that a peer away all that time still gossips.
import type { MeshView } from './mesh.js';
import { type EntryCodec, MAX_VERSION, type PeerRecord, PeerRecords } from './peer-records.js';
import { isPeerName, type PeerName } from './peer-name.js';
import { every, type Tick } from '../lib/ticker.js';

export interface TombstoneTimings {
  /** How often a peer checks what it may collect and republishes what it holds. */
  intervalMs: number;
  /** How long a tombstone must be held by every member before it is collected. */
  delayMs: number;
  /** How long a collected tombstone still refuses registers at or below it. */
  retainMs: number;
}

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

/** For the mesh's default gossip interval (30 s): collected a minute after every member holds it. */
const defaultTombstoneTimings: TombstoneTimings = tombstoneTimings(30_000);

export interface TombstoneOptions {
  timings?: Partial<TombstoneTimings>;
  /**
   * Peers this host knew of before it kept members (the first start after an upgrade): IPAM's ring
   * owners, pinned keys. With the table's register origins, the members to start from, so that a
   * peer down during the upgrade still holds collection back.
   */
  knownPeers?: () => PeerName[];
}

/** What the collector keeps between runs: a list of the floor (a number), member names, and ["forgotten", name]. */
export interface TombstoneStore {
  load<T>(check: (item: unknown) => T): T[];
  /** False when the write failed (then nothing is collected: a restart would not know the members). */
  save(list: unknown[]): boolean;
}

/** A register, as acknowledgements name it: what a tombstone is compared by. */
export interface RegisterStamp {
  id: string;
  version: number;
  origin: PeerName;
}

/** The table whose tombstones are collected. */
export interface TombstoneHolder {
  tombstones(): RegisterStamp[];
  /** Forgets these tombstones (each only if it is still that register). */
  collect(tombstones: RegisterStamp[]): void;
  /** Every origin of a register held (members to start from after an upgrade). */
  origins(): PeerName[];
  /** Whether the table is on disk (a write that failed is tried again): only what is on disk is acknowledged. */
  ensureSaved(): boolean;
}

const enum AckKind {
  Held = 0,
  Collected = 1,
  Floor = 2,
  /**
   * A peer removed by `weft rmpeer` or gone by `weft reset` (the id is its name, the version when, in
   * ms; the origin is the peer itself when it said so).
   */
  Forgotten = 3,
  /** A member this peer knows of that is not reachable (the id is its name, the version when it was last reachable, in ms). */
  Member = 4,
}

interface Ack {
  id: string;
  version: number;
  kind: AckKind;
  /** The register's origin (held and collected), else "". */
  origin: string;
}

/** The highest floor taken from a peer: half the version space stays for changes after it. */
const FLOOR_CAP = MAX_VERSION / 2;

/** At most this many tombstones held (and as many collected) are listed per record; the rest wait their turn. */
const MAX_LISTED_TOMBSTONES = 256;
/** At most this many members and as many forgotten peers per record; a record listing more is not read for them. */
const MAX_LISTED_PEERS = 256;

const ackCodec: EntryCodec<Ack> = {
  toWire: (a) => [a.id, a.version, a.kind, a.origin],
  fromWire(w) {
    if (!Array.isArray(w) || w.length !== 4) throw new Error('tombstone acknowledgement is malformed');
    const [id, version, kind, origin] = w as unknown[];
    if (
      typeof id !== 'string' ||
      id.length > 256 ||
      typeof origin !== 'string' ||
      !Number.isSafeInteger(version) ||
      (version as number) < 0 ||
      (version as number) > MAX_VERSION ||
      !(kind === 0 || kind === 1 || kind === 2 || kind === 3 || kind === 4) ||
      ((kind === 0 || kind === 1) && !isPeerName(origin)) ||
      (kind === 3 && origin !== '' && !isPeerName(origin)) ||
      ((kind === 3 || kind === 4) && !isPeerName(id))
    )
      throw new Error('tombstone acknowledgement is malformed');
    // Every put starts above the floor: one near the cap would leave no versions to change anything with.
    // A time past it (no clock says so) would push an rmpeer's time past what the wire takes.
    if ((kind === 2 || kind === 3 || kind === 4) && (version as number) > FLOOR_CAP)
      throw new Error(`tombstone floor ${version as number} is above 2^51`);
    return { id, version: version as number, kind: kind as AckKind, origin };
  },
  key: (a) => `${a.kind}:${a.version}:${a.origin}:${a.id}`,
};

/** Register order without the content: >0 when (version, origin) a is after b. */
function compareStamps(a: { version: number; origin: string }, b: { version: number; origin: string }): number {
  if (a.version !== b.version) return a.version - b.version;
  return a.origin === b.origin ? 0 : a.origin > b.origin ? 1 : -1;
}

/**
 * More peers than any mesh has: past it (members listed by a peer gone wrong), nothing more is
 * collected until a restart, which is safe, and the table stays as it would without collection.
 */
const MAX_MEMBERS = 10_000;

/** Records of peers that left the topology: kept this long (a member that is down may still count its acknowledgements). */
const ACK_GRACE_MS = 10 * 60_000;

/** What one peer's record says, read once per record (records are never changed in place). */
interface RecordSummary {
  /** id -> the latest register held or collected, by (version, origin). */
  acks: Map<string, { version: number; origin: string }>;
  floor: number;
  /** Members and when each was last reachable (ms). */
  members: [PeerName, number][];
  /** Peers removed, and when (ms). */
  forgotten: [PeerName, number][];
  /** The record's own peer said it leaves for good (weft reset). */
  left: boolean;
}

const summaries = new WeakMap<PeerRecord<Ack>, RecordSummary>();
function summary(r: PeerRecord<Ack>): RecordSummary {
  let sum = summaries.get(r);
  if (!sum) {
    sum = { acks: new Map(), floor: 0, members: [], forgotten: [], left: false };
    for (const a of r.entries) {
      if (a.kind === AckKind.Held || a.kind === AckKind.Collected) {
        const cur = sum.acks.get(a.id);
        if (!cur || compareStamps(a, cur) > 0) sum.acks.set(a.id, { version: a.version, origin: a.origin });
      } else if (a.kind === AckKind.Floor) sum.floor = Math.max(sum.floor, a.version);
      else if (a.kind === AckKind.Member) sum.members.push([a.id as PeerName, a.version]);
      else {
        sum.forgotten.push([a.id as PeerName, a.version]);
        if (a.id === r.peer && a.origin === r.peer) sum.left = true;
      }
    }
    if (sum.members.length > MAX_LISTED_PEERS) sum.members = [];
    if (sum.forgotten.length > MAX_LISTED_PEERS) sum.forgotten = sum.forgotten.filter(([p]) => p === r.peer);
    summaries.set(r, sum);
  }
  return sum;
}

/** Whether a record acknowledges holding this tombstone or a later register of its id. */
function acknowledges(sum: RecordSummary, t: RegisterStamp): boolean {
  const a = sum.acks.get(t.id);
  return a !== undefined && compareStamps(a, t) >= 0;
}

const byStamp = (a: RegisterStamp, b: RegisterStamp) => compareStamps(a, b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

export class TombstoneCollector {
  private readonly acks: PeerRecords<Ack>;
  private readonly store?: TombstoneStore;
  /**
   * Every peer known here, with when it was last reachable (ms; here, or as another member says;
   * 0: not known). Kept on disk.
   */
  private readonly known = new Map<PeerName, number>();
  /** Peers removed by `weft rmpeer` or gone by `weft reset`, and when (ms), as heard from anyone. Kept on disk. */
  private readonly forgottenAt = new Map<PeerName, number>();
  /**
   * The members: this peer, every peer reachable now, and every known peer not removed since it
   * was last reachable (a peer back after an rmpeer is a member again, whoever still lists the rmpeer).
   */
  private members = new Set<PeerName>();
  /** Peers reachable at the last look: one that is no longer gets its last-reachable time. */
  private reachable = new Set<PeerName>();
  /** The highest version this peer ever collected. */
  private ownFloor = 0;
  private readonly collected = new Map<string, { version: number; origin: string; at: number }>();
  /** Tombstones held by every member, since when (as that register). */
  private readonly stableSince = new Map<string, { stamp: RegisterStamp; since: number }>();
  private published = '';
  /** Something that the published record shows may have changed. */
  private dirty = true;
  private membersSaved = true;
  private readonly timer: Tick;
  private nudged: NodeJS.Timeout | null = null;
  private readonly timings: TombstoneTimings;
  private overfull = false;
  private left = false;
  /** Records already learnt from. */
  private readonly read = new WeakSet<PeerRecord<Ack>>();
  /** A last-reachable time changed since the members were written; when they were. */
  private stampsDirty = false;
  private savedAt = 0;

  constructor(
    private readonly mesh: MeshView,
    channelName: string,
    private readonly holder: TombstoneHolder,
    options: TombstoneOptions & { store?: TombstoneStore } = {},
  ) {
    this.store = options.store;
    this.timings = { ...defaultTombstoneTimings, ...options.timings };
    const saved = this.store?.load(checkStoreItem) ?? [];
    for (const item of saved) {
      if (typeof item === 'number') this.ownFloor = Math.max(this.ownFloor, item);
      else if (item[0] === 'member') this.known.set(item[1], item[2]);
      else this.forgottenAt.set(item[1], item[2]);
    }
    if (saved.length === 0) {
      // Kept nothing yet (the first start with collection): start from every peer this host knows of.
      for (const p of [...holder.origins(), ...(options.knownPeers?.() ?? [])]) this.known.set(p, 0);
    }
    this.known.set(mesh.name, 0);
    this.acks = new PeerRecords(mesh, `${channelName}-acks`, ackCodec, ACK_GRACE_MS);
    this.acks.onChange(() => this.noteMembers());
    mesh.on('topology', () => this.noteMembers());
    // A neighbour is a member before anything is gossiped over its connection.
    mesh.on('connection-added', () => this.noteMembers());
    this.noteMembers(true); // written at every start: the floor, and any seeded members
    this.timer = every(this.timings.intervalMs, () => this.pass());
  }

  stop(): void {
    this.timer.stop();
    if (this.nudged) clearTimeout(this.nudged);
    this.acks.stop();
    // The peers reachable until now: a restart must not take them for gone since the last write.
    if (!this.left) this.save();
  }

  /** The version a new register must exceed: the highest collected anywhere that this peer knows of. */
  get floor(): number {
    let f = this.ownFloor;
    for (const r of this.acks.records.values()) f = Math.max(f, summary(r).floor);
    return f;
  }

  /** Whether a register from the wire may be merged: not one at or below a tombstone collected lately. */
  admits(id: string, version: number, origin: PeerName): boolean {
    const c = this.collected.get(id);
    return !c || compareStamps({ version, origin }, c) > 0;
  }

  /** The table changed: say soon what this peer holds now. */
  nudge(): void {
    this.dirty = true;
    if (this.nudged) return;
    this.nudged = setTimeout(() => {
      this.nudged = null;
      this.publish();
    }, 0);
    this.nudged.unref();
  }

  /**
   * `weft rmpeer`: the peer stops being a member, here and (gossiped) everywhere. Returns whether it
   * was one; run again, it sends the removal again, later than every sighting known here.
   */
  forget(peer: PeerName): boolean {
    if (peer === this.mesh.name || this.mesh.isReachable(peer)) return false;
    const was = this.members.has(peer);
    // After its last reachable time as known here (another host's clock may be ahead), never earlier than before.
    const at = Math.max(Date.now(), (this.known.get(peer) ?? 0) + 1, this.forgottenAt.get(peer) ?? 0);
    this.forgottenAt.set(peer, at);
    this.acks.evict(peer, [{ id: peer, version: at, kind: AckKind.Forgotten, origin: '' }]);
    this.noteMembers(true);
    return was;
  }

  /**
   * `weft reset`: this peer leaves for good. Its record says it is forgotten, so the others stop
   * counting it as a member once it is gone; it collects and acknowledges nothing more.
   */
  leave(): void {
    this.left = true;
    this.acks.setLocal([{ id: this.mesh.name, version: Date.now(), kind: AckKind.Forgotten, origin: this.mesh.name }]);
  }

  /** Tombstones held, members, those some tombstone still waits for, and the floor new versions start above. */
  status(): { tombstones: number; members: number; waitingFor: PeerName[]; floor: number } {
    const tombs = this.holder.tombstones();
    // The ones in turn: those every peer lists (the rest are not waiting for anyone yet).
    const listed = this.listed(tombs);
    const waitingFor: PeerName[] = [];
    for (const p of this.members) {
      if (p === this.mesh.name) continue;
      const r = this.acks.records.get(p);
      if (listed.some((t) => !r || !acknowledges(summary(r), t))) waitingFor.push(p);
    }
    return { tombstones: tombs.length, members: this.members.size, waitingFor: waitingFor.sort(), floor: this.floor };
  }

  /** The tombstones a record lists: the first ones by (version, origin, id), the same on every peer that holds them. */
  private listed(tombs: RegisterStamp[]): RegisterStamp[] {
    return tombs.sort(byStamp).slice(0, MAX_LISTED_TOMBSTONES);
  }

  /** Whether a record is one to learn members from: of a peer in the topology or known (not a phantom). */
  private credible(p: PeerName): boolean {
    return this.known.has(p) || this.mesh.inTopology(p);
  }

  /** Learns peers, their last reachable times and removals from the topology and the records; works out the members. */
  private noteMembers(save = false): void {
    const now = Date.now();
    let changed = save;
    const learn = (p: PeerName, seen: number) => {
      const cur = this.known.get(p);
      if (cur !== undefined && cur >= seen) return;
      // A removed peer comes back only with a sighting after its removal.
      if (cur === undefined && (this.forgottenAt.get(p) ?? -1) > seen) return;
      if (cur === undefined && this.known.size >= MAX_MEMBERS) {
        // Sticky: a peer that could not be recorded may hold anything; nothing is collected from now on.
        if (!this.overfull)
          this.mesh.log.error({ peer: p }, 'too many peers known; removed rules and services are kept');
        this.overfull = true;
        return;
      }
      this.known.set(p, seen);
      this.stampsDirty = true;
      if (cur === undefined) changed = true;
    };
    const reachable = new Set<PeerName>();
    for (const { name } of this.mesh.peers()) {
      learn(name, 0);
      if (this.mesh.isReachable(name)) reachable.add(name);
    }
    for (const n of this.mesh.neighbours(true)) reachable.add(n.name);
    // Seen reachable now: after any removal known here, whatever the clock of the host that made it.
    const sighting = (p: PeerName) => Math.max(now, (this.forgottenAt.get(p) ?? -1) + 1);
    for (const p of reachable) if (!this.known.has(p)) learn(p, sighting(p));
    // Gone since the last look: reachable until now.
    for (const p of this.reachable) if (!reachable.has(p)) learn(p, sighting(p));
    this.reachable = reachable;
    for (const [p, r] of this.acks.records) {
      if (!this.credible(p)) continue;
      learn(p, 0);
      // Stamps only grow: a record read once has nothing more to teach.
      if (this.read.has(r)) continue;
      this.read.add(r);
      const sum = summary(r);
      for (const [m, seen] of sum.members) learn(m, seen);
      for (const [f, at] of sum.forgotten)
        if (f !== this.mesh.name && (this.forgottenAt.get(f) ?? -1) < at) {
          this.forgottenAt.set(f, at);
          changed = true;
        }
    }
    // A peer that said it leaves for good (its own latest record) and is out of the topology: removed
    // after all it was seen doing (it supersedes that record if it comes back). Kept past the record's expiry.
    for (const [p, r] of this.acks.records) {
      if (p === this.mesh.name || this.mesh.inTopology(p) || !this.credible(p)) continue;
      if (!summary(r).left) continue;
      const seen = this.known.get(p) ?? 0;
      if ((this.forgottenAt.get(p) ?? -1) <= seen) {
        this.forgottenAt.set(p, seen + 1);
        changed = true;
      }
    }
    const members = new Set<PeerName>([this.mesh.name, ...reachable]);
    for (const [p, seen] of this.known) if (!((this.forgottenAt.get(p) ?? -1) > seen)) members.add(p);
    for (const p of members) if (!this.members.has(p)) changed = true;
    for (const p of this.members) if (!members.has(p)) changed = true;
    this.members = members;
    // Who is a member, or a removal, at once; a later last-reachable time at the next pass.
    if (changed) this.save();
    // What the record lists of the members depends on the topology too.
    this.nudge();
  }

  private save(): void {
    if (!this.store) return;
    const now = Date.now();
    // Reachable peers are seen now (after every removal known here, as any sighting); removed ones
    // need no last-reachable time (the removal keeps them out) and leave room under MAX_MEMBERS.
    for (const [p, seen] of this.known) {
      if (this.reachable.has(p)) this.known.set(p, Math.max(now, seen, (this.forgottenAt.get(p) ?? -1) + 1));
      else if ((this.forgottenAt.get(p) ?? -1) > seen && p !== this.mesh.name) this.known.delete(p);
    }
    this.stampsDirty = false;
    this.savedAt = now;
    this.membersSaved = this.store.save([
      this.ownFloor,
      ...[...this.known].sort().map(([p, seen]) => ['member', p, seen]),
      ...[...this.forgottenAt].sort().map(([p, at]) => ['forgotten', p, at]),
    ]);
  }

  private publish(): void {
    if (this.left || !this.dirty) return;
    // Only what is on disk: after a restart this peer must still hold what it acknowledged.
    if (!this.holder.ensureSaved()) return;
    this.dirty = false;
    const entries: Ack[] = this.listed(this.holder.tombstones()).map((t) => ({ ...t, kind: AckKind.Held }));
    const collected = [...this.collected].slice(-MAX_LISTED_TOMBSTONES);
    for (const [id, c] of collected)
      entries.push({ id, version: c.version, origin: c.origin, kind: AckKind.Collected });
    if (this.ownFloor > 0) entries.push({ id: '', version: this.ownFloor, kind: AckKind.Floor, origin: '' });
    const away = [...this.members].filter((p) => !this.reachable.has(p) && p !== this.mesh.name).sort();
    for (const p of away.slice(0, MAX_LISTED_PEERS))
      entries.push({ id: p, version: this.known.get(p) ?? 0, kind: AckKind.Member, origin: '' });
    const removals = [...this.forgottenAt].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    for (const [p, at] of removals.slice(0, MAX_LISTED_PEERS))
      entries.push({ id: p, version: at, kind: AckKind.Forgotten, origin: '' });
    const key = JSON.stringify(entries.map(ackCodec.key));
    if (key === this.published) return;
    this.published = key;
    this.acks.setLocal(entries);
  }

  /** Collects what every member holds, for long enough; republishes. */
  private pass(now = Date.now()): void {
    if (this.left) return;
    for (const [id, c] of this.collected)
      if (now - c.at >= this.timings.retainMs) {
        this.collected.delete(id);
        this.dirty = true;
      }
    // Members not on disk, or a table not on disk: a restart would not know what it must (tried again
    // here). Last-reachable times are written at most once an interval, and for reachable peers once a minute.
    if (!this.membersSaved || this.stampsDirty || (this.reachable.size > 0 && now - this.savedAt >= 60_000))
      this.save();
    const collecting = !this.overfull && this.membersSaved && this.holder.ensureSaved();
    const others: RecordSummary[] = [];
    let everyone = collecting;
    for (const p of this.members) {
      if (p === this.mesh.name) continue;
      const r = this.acks.records.get(p);
      if (!r) everyone = false;
      else others.push(summary(r));
    }
    const ready: RegisterStamp[] = [];
    const held = new Set<string>();
    for (const t of everyone ? this.holder.tombstones() : []) {
      held.add(t.id);
      if (others.some((sum) => !acknowledges(sum, t))) continue;
      const s = this.stableSince.get(t.id);
      if (!s || compareStamps(s.stamp, t) !== 0) this.stableSince.set(t.id, { stamp: t, since: now });
      else if (now - s.since >= this.timings.delayMs) ready.push(t);
    }
    for (const id of this.stableSince.keys()) if (!held.has(id)) this.stableSince.delete(id);
    if (ready.length > 0) {
      for (const t of ready) {
        this.collected.delete(t.id); // re-inserted last: the listing keeps the newest
        this.collected.set(t.id, { version: t.version, origin: t.origin, at: now });
        this.stableSince.delete(t.id);
        this.ownFloor = Math.max(this.ownFloor, t.version);
      }
      this.holder.collect(ready);
      this.save();
      this.dirty = true;
    }
    this.publish();
  }
}

type StoreItem = number | ['member', PeerName, number] | ['forgotten', PeerName, number];

function checkStoreItem(item: unknown): StoreItem {
  const isTime = (t: unknown): t is number => Number.isSafeInteger(t) && (t as number) >= 0;
  if (typeof item === 'number' && Number.isSafeInteger(item) && item >= 0 && item <= MAX_VERSION) return item;
  if (
    Array.isArray(item) &&
    item.length === 3 &&
    (item[0] === 'member' || item[0] === 'forgotten') &&
    isPeerName(item[1]) &&
    isTime(item[2])
  )
    return item as StoreItem;
  throw new Error('neither a version, a member nor a removed peer');
}
