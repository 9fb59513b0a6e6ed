// The allocator: hands out addresses from the ring's ranges this peer owns,
// asks owners for space by unicast, starts the ring (consensus, seed or
// observer), and never waits silently: every request that cannot be served
// yet carries the reason, and fails with it after a bounded time.
import { WeftError } from '../lib/errors.js';
import {
  type Gossip,
  type GossipData,
  type Gossiper,
  type MeshView,
  pack,
  unpack,
  isPeerName,
  type PeerName,
} from '../mesh/index.js';
import type { Addr } from '../net/addr.js';
import { IPV4, type CidrOf, type IpFamily, type Position } from '../net/family.js';
import { PaxosNode, nodeId, validatePaxos, type PaxosState } from './paxos.js';
import {
  Ring,
  type RingEntry,
  type RingOrigin,
  compareRingEntries,
  entryFromWire,
  entryToWire,
  sameOrigin,
} from './ring.js';
import type { Liveness } from './liveness.js';
import { every, type Tick } from '../lib/ticker.js';

const IPAM_CHANNEL = 'ipam';

/** Where an allocator keeps its ring and its containers' addresses (ipam/store.ts for IPv4). */
export interface AllocatorStore<A extends Position> {
  load(): { ring: Ring<A> | null; owned: Map<string, A[]> };
  /** Resolves once the write is committed to disk. */
  save(ring: Ring<A> | null, owned: Map<string, A[]>): Promise<void>;
}

export type InitMode =
  { kind: 'consensus'; quorum: number; peers: number } | { kind: 'seed'; seeds: PeerName[] } | { kind: 'observer' };

export interface AllocatorConfig<A extends Position = Addr> {
  /** IPv4 unless given; each family has its own ring, on its own channel. */
  family?: IpFamily<A>;
  /** The gossip channel: "ipam" unless given. */
  channel?: string;
  range: CidrOf<A>;
  defaultSubnet: CidrOf<A>;
  init: InitMode;
  /** How long a request may wait for consensus or space before it fails with the reason. */
  timeoutMs: number;
  store: AllocatorStore<A> | null;
  /** Tells whether a container still exists (null: cannot tell); addresses of gone ones are freed. */
  liveness?: Liveness;
}

export type IpamErrorCode = 'pending' | 'full' | 'conflict' | 'not-found' | 'invalid' | 'refused';

export class IpamError extends WeftError {
  constructor(code: IpamErrorCode, message: string) {
    super(code, message);
  }
}

interface Pending<A extends Position> {
  kind: 'allocate' | 'claim' | 'prime';
  ident: string;
  subnet: CidrOf<A>;
  addr?: A;
  since: number;
  deadline: number;
  reason: string;
  resolve: (v: CidrOf<A> & { addr: A }) => void;
  reject: (e: IpamError) => void;
}

/** One gossip update on the IPAM channel: ring entries (with the ring's origin) and/or Paxos state. */
class IpamUpdate<A extends Position> implements GossipData {
  constructor(
    readonly family: IpFamily<A>,
    readonly origin: RingOrigin<A> | null,
    readonly entries: RingEntry<A>[],
    readonly paxos: PaxosState | null,
  ) {}
  encode(): Uint8Array {
    const f = this.family;
    return pack({
      o: this.origin ? [f.toWire(this.origin.start), f.toWire(this.origin.end), this.origin.seeds] : null,
      r: this.entries.map((e) => entryToWire(e, f)),
      p: this.paxos,
    });
  }
  merge(other: GossipData): GossipData {
    const o = other as IpamUpdate<A>;
    const byToken = new Map(this.entries.map((e) => [e.token, e]));
    for (const e of o.entries) {
      // The ring's own order (version, then owner, then free): merging pending updates must pick what the ring would.
      const cur = byToken.get(e.token);
      if (!cur || compareRingEntries(e, cur) > 0) byToken.set(e.token, e);
    }
    return new IpamUpdate(this.family, o.origin ?? this.origin, [...byToken.values()], o.paxos ?? this.paxos);
  }
}

function decodeOrigin<A extends Position>(f: IpFamily<A>, v: unknown): RingOrigin<A> | null {
  if (v === null || v === undefined) return null;
  if (!Array.isArray(v) || v.length !== 3) throw new Error('ring origin is malformed');
  const [startWire, endWire, seeds] = v as unknown[];
  let start: A;
  let end: A;
  try {
    start = f.fromWire(startWire);
    end = f.fromWire(endWire);
  } catch {
    throw new Error('ring origin is malformed');
  }
  if (!(start < end) || !Array.isArray(seeds) || seeds.length > 10_000) throw new Error('ring origin is malformed');
  if (!seeds.every((s) => typeof s === 'string' && isPeerName(s))) throw new Error('ring origin seeds are malformed');
  return { start, end, seeds: seeds as PeerName[] };
}

function decodeUpdate<A extends Position>(
  f: IpFamily<A>,
  bytes: Uint8Array,
): {
  origin: RingOrigin<A> | null;
  entries: RingEntry<A>[];
  paxos: PaxosState | null;
} {
  const v = unpack(bytes) as { o?: unknown; r?: unknown; p?: unknown };
  if (typeof v !== 'object' || v === null) throw new Error('ipam update is not a map');
  if (v.r !== undefined && (!Array.isArray(v.r) || v.r.length > 1_000_000))
    throw new Error('ipam ring entries are malformed');
  return {
    origin: decodeOrigin(f, v.o),
    entries: ((v.r as unknown[] | undefined) ?? []).map((w) => entryFromWire(w, f)),
    paxos: v.p === null || v.p === undefined ? null : validatePaxos(v.p),
  };
}

type Unicast =
  // Positions in their wire form (IpFamily.toWire).
  | { t: 'req'; id: number; s: unknown; p: number; a?: unknown }
  | { t: 'grant'; id: number; o: unknown; r: unknown[] }
  | { t: 'deny'; id: number; why: string; full?: boolean }
  | { t: 'want' }
  | { t: 'ring'; o: unknown; r: unknown[] };

export class Allocator<A extends Position = Addr> implements Gossiper {
  ring: Ring<A> | null = null;
  private paxos: PaxosNode | null = null;
  /** Addresses per container (ident), and the reverse. */
  readonly owned = new Map<string, A[]>();
  private readonly byAddr = new Map<A, string>();
  private readonly pending = new Set<Pending<A>>();
  readonly family: IpFamily<A>;
  readonly conflicts: string[] = [];
  private readonly channel: Gossip;
  private tick: Tick;
  private requestId = 0;
  private outstanding: { id: number; peer: PeerName; at: number } | null = null;
  /** Owners that said they have no free space in the subnet: skipped for a while; when all say so, it is full. */
  private readonly denied = new Map<PeerName, number>();
  /** Owners that did not answer, or could not yet (no ring): skipped briefly, never taken as "full". */
  private readonly unresponsive = new Map<PeerName, number>();
  private freeDirty = false;
  private initStarted = false;
  private ticks = 0;
  /** Nicknames of peers seen in the topology, so a departed peer can still be named (rmpeer, status). */
  private readonly nicknames = new Map<PeerName, string>();

  constructor(
    private readonly mesh: MeshView,
    readonly config: AllocatorConfig<A>,
  ) {
    this.family = config.family ?? (IPV4 as unknown as IpFamily<A>);
    this.channel = mesh.registerChannel(config.channel ?? IPAM_CHANNEL, this);
    if (config.store) {
      const saved = config.store.load();
      if (saved.ring) this.ring = saved.ring;
      for (const [ident, addrs] of saved.owned) for (const a of addrs) this.record(ident, a);
    }
    if (!this.ring && config.init.kind === 'seed') this.createRing(config.init.seeds);
    this.tick = every(1000, () => this.onTick());
    // Reconcile with what really runs, at start and every few seconds.
    this.pruneGone().catch((err: Error) =>
      this.mesh.log.error({ err: err.message }, 'ipam: freeing the addresses of gone containers failed'),
    );
    mesh.on('topology', () => {
      for (const e of mesh.peers()) this.nicknames.set(e.name, e.nickname);
      this.retryPending();
    });
  }

  get self(): PeerName {
    return this.mesh.name;
  }

  stop(): void {
    this.tick.stop();
    for (const p of this.pending) p.reject(new IpamError('refused', 'the router is shutting down'));
    this.pending.clear();
  }

  // ------------------------------------------------------------------ requests

  /** An address for `ident` in `subnet` (default subnet if none): the lowest free one. Idempotent per ident and subnet. */
  allocate(
    ident: string,
    subnet: CidrOf<A> = this.config.defaultSubnet,
    timeoutMs = this.config.timeoutMs,
  ): Promise<CidrOf<A> & { addr: A }> {
    this.checkSubnet(subnet);
    return this.enqueue({ kind: 'allocate', ident, subnet }, timeoutMs);
  }

  /** Claims a given address for `ident`. */
  claim(
    ident: string,
    addr: A,
    subnet: CidrOf<A>,
    timeoutMs = this.config.timeoutMs,
  ): Promise<CidrOf<A> & { addr: A }> {
    const f = this.family;
    if (!f.contains(this.config.range, { start: addr, prefix: f.bits })) {
      // Outside the range weft manages: recorded, nobody else hands it out (as Weave does). Only
      // this host's claims are known here: two containers here cannot both claim one.
      const holder = this.byAddr.get(addr);
      if (holder !== undefined && holder !== ident)
        return Promise.reject(new IpamError('conflict', `${f.formatIp(addr)} is already claimed by ${holder}`));
      this.record(ident, addr);
      return this.persist().then(() => ({ ...subnet, addr }));
    }
    return this.enqueue({ kind: 'claim', ident, subnet, addr }, timeoutMs);
  }

  /** Waits until the ring exists (starting consensus if needed). */
  prime(timeoutMs = this.config.timeoutMs): Promise<void> {
    return this.enqueue({ kind: 'prime', ident: '', subnet: this.config.range }, timeoutMs).then(() => undefined);
  }

  lookup(ident: string): A[] {
    return this.owned.get(ident) ?? [];
  }

  /** Who holds an address on this peer (Docker's IPAM frees by address). */
  holderOf(addr: A): string | undefined {
    return this.byAddr.get(addr);
  }

  /** Frees one address, or all of a container's. */
  async free(ident: string, addr?: A): Promise<A[]> {
    const addrs = this.owned.get(ident);
    if (!addrs || addrs.length === 0) throw new IpamError('not-found', `no addresses for ${ident}`);
    const gone = addr === undefined ? [...addrs] : addrs.includes(addr) ? [addr] : [];
    if (gone.length === 0)
      throw new IpamError('not-found', `${this.family.formatIp(addr!)} is not allocated to ${ident}`);
    for (const a of gone) this.unrecord(ident, a);
    for (const p of this.pending)
      if (p.ident === ident)
        this.fail(p, new IpamError('refused', `request for ${ident} cancelled: its addresses were freed`));
    this.freeDirty = true;
    await this.persist();
    return gone;
  }

  private checkSubnet(subnet: CidrOf<A>): void {
    const f = this.family;
    if (!f.contains(this.config.range, subnet)) {
      throw new IpamError(
        'invalid',
        `subnet ${f.formatCidr(subnet)} is not inside the allocation range ${f.formatCidr(this.config.range)}`,
      );
    }
    if (subnet.prefix > f.maxSubnetPrefix)
      throw new IpamError('invalid', `subnet ${f.formatCidr(subnet)} is too small (at most /${f.maxSubnetPrefix})`);
  }

  private enqueue(
    op: Pick<Pending<A>, 'kind' | 'ident' | 'subnet' | 'addr'>,
    timeoutMs: number,
  ): Promise<CidrOf<A> & { addr: A }> {
    return new Promise((resolve, reject) => {
      const now = Date.now();
      const p: Pending<A> = { ...op, since: now, deadline: now + timeoutMs, reason: 'starting', resolve, reject };
      this.pending.add(p);
      this.ensureRing();
      this.attempt(p);
    });
  }

  private fail(p: Pending<A>, e: IpamError): void {
    this.pending.delete(p);
    p.reject(e);
  }

  /** Tries to satisfy one pending request; otherwise records why not. */
  private attempt(p: Pending<A>): void {
    if (!this.pending.has(p)) return;
    if (!this.ring) {
      p.reason = this.waitingForRingReason();
      return;
    }
    if (p.kind === 'prime') {
      this.pending.delete(p);
      p.resolve({ ...this.config.range, addr: this.family.zero });
      return;
    }
    if (p.kind === 'claim') return this.attemptClaim(p);
    const end = this.family.cidrEnd(p.subnet);
    const mine = this.owned.get(p.ident)?.find((a) => a >= p.subnet.start && a < end);
    if (mine !== undefined) return this.done(p, mine);
    const addr = this.lowestFree(p.subnet);
    if (addr !== null) {
      this.record(p.ident, addr);
      return this.done(p, addr);
    }
    this.askForSpace(p);
  }

  private attemptClaim(p: Pending<A>): void {
    const addr = p.addr!;
    const holder = this.byAddr.get(addr);
    if (holder === p.ident) return this.done(p, addr);
    if (holder !== undefined)
      return this.fail(p, new IpamError('conflict', `${this.family.formatIp(addr)} is already allocated to ${holder}`));
    const owner = this.ring!.ownerOf(addr);
    if (owner === this.self) {
      this.record(p.ident, addr);
      return this.done(p, addr);
    }
    this.askForSpace(p);
  }

  private done(p: Pending<A>, addr: A): void {
    this.pending.delete(p);
    this.freeDirty = true;
    this.persist().then(
      () => p.resolve({ ...p.subnet, addr }),
      (err: Error) => p.reject(new IpamError('refused', `could not persist the allocation: ${err.message}`)),
    );
  }

  private retryPending(): void {
    for (const p of [...this.pending]) this.attempt(p);
  }

  private onTick(): void {
    const now = Date.now();
    if (this.outstanding && now - this.outstanding.at > 2000) {
      this.unresponsive.set(this.outstanding.peer, now);
      this.outstanding = null;
    }
    for (const [peer, at] of this.denied) if (now - at > 5000) this.denied.delete(peer);
    for (const [peer, at] of this.unresponsive) if (now - at > 1000) this.unresponsive.delete(peer);
    if (!this.ring && this.paxos && this.pending.size > 0) {
      // Re-propose while waiting: a lost round or a late quorum member must not stall the election.
      this.paxos.propose();
      this.paxos.think();
      this.afterPaxos();
    }
    if (!this.ring && this.config.init.kind === 'observer' && this.pending.size > 0) this.askForRing();
    this.retryPending();
    for (const p of [...this.pending]) {
      if (now >= p.deadline) {
        this.fail(p, new IpamError('pending', `gave up after ${((now - p.since) / 1000).toFixed(0)}s: ${p.reason}`));
      }
    }
    if (this.freeDirty) this.reportFree();
    if (++this.ticks % 5 === 0)
      this.pruneGone().catch((err: Error) =>
        this.mesh.log.error({ err: err.message }, 'ipam: freeing the addresses of gone containers failed'),
      );
  }

  /** Frees the addresses of containers that no longer exist. Returns the idents freed. */
  async pruneGone(): Promise<string[]> {
    const alive = this.config.liveness;
    if (!alive) return [];
    const gone = [...this.owned.keys()].filter((ident) => alive(ident) === false);
    for (const ident of gone) {
      const addrs = this.owned.get(ident) ?? [];
      this.mesh.log.info(
        { container: ident, addresses: addrs.map((a) => this.family.formatIp(a)) },
        'ipam: container is gone; its addresses are free',
      );
      for (const a of addrs) this.unrecord(ident, a);
    }
    if (gone.length > 0) {
      this.freeDirty = true;
      await this.persist();
    }
    return gone;
  }

  // ------------------------------------------------------------------ local space

  private record(ident: string, addr: A): void {
    const list = this.owned.get(ident) ?? [];
    if (!list.includes(addr)) list.push(addr);
    this.owned.set(ident, list);
    this.byAddr.set(addr, ident);
  }

  private unrecord(ident: string, addr: A): void {
    const list = (this.owned.get(ident) ?? []).filter((a) => a !== addr);
    if (list.length === 0) this.owned.delete(ident);
    else this.owned.set(ident, list);
    this.byAddr.delete(addr);
  }

  /** The lowest address in the subnet's host range that this peer owns and has not handed out. */
  private lowestFree(subnet: CidrOf<A>): A | null {
    const f = this.family;
    const [lo, hi] = f.hostRange(subnet);
    for (const r of this.ring!.rangesOf(this.self)) {
      const from = max(lo, r.start);
      const to = min(hi, r.end);
      // At most (addresses in use + 1) steps: fine for 128 bits too.
      for (let a = from; a < to; a = f.add(a, f.one)) if (!this.byAddr.has(a)) return a;
    }
    return null;
  }

  private freeIn(start: A, end: A): A {
    let used = 0;
    for (const a of this.byAddr.keys()) if (a >= start && a < end) used++;
    return this.family.sub(this.family.sub(end, start), this.family.fromCount(used));
  }

  /** Refreshes the free-space hints of our ring entries, so others know whom to ask. */
  private reportFree(): void {
    this.freeDirty = false;
    if (!this.ring) return;
    const changed: RingEntry<A>[] = [];
    for (const r of this.ring.rangesOf(this.self)) {
      const e = this.ring.setFree(this.self, r.start, this.freeIn(r.start, r.end));
      if (e) changed.push(e);
    }
    if (changed.length > 0) this.ringChanged(changed);
  }

  // ------------------------------------------------------------------ asking others for space

  private askForSpace(p: Pending<A>): void {
    const ring = this.ring!;
    const f = this.family;
    const { formatIp, formatCidr } = f;
    const reachable = (peer: PeerName) => this.mesh.isReachable(peer);
    const start = p.kind === 'claim' ? p.addr! : p.subnet.start;
    const end = p.kind === 'claim' ? f.add(p.addr!, f.one) : f.cidrEnd(p.subnet);
    const candidates = ring.ranges().filter((r) => r.entry.owner !== this.self && r.start < end && r.end > start);
    if (candidates.length === 0) {
      if (p.kind === 'claim')
        return this.fail(p, new IpamError('conflict', `${formatIp(p.addr!)} is not in any range of the ring`));
      return this.fail(
        p,
        new IpamError(
          'full',
          `${formatCidr(p.subnet)} is full: no free address on this peer, and no other peer owns part of it`,
        ),
      );
    }
    const owners = [...new Set(candidates.map((r) => r.entry.owner))];
    const live = candidates.filter(
      (r) => reachable(r.entry.owner) && !this.denied.has(r.entry.owner) && !this.unresponsive.has(r.entry.owner),
    );
    if (live.length === 0) {
      const dead = owners.filter((o) => !reachable(o));
      const silent = owners.filter((o) => this.unresponsive.has(o));
      if (dead.length === 0 && silent.length === 0 && !this.outstanding) {
        // Every owner was asked and said no: the subnet is full, now.
        const why = p.kind === 'claim' ? `${formatIp(p.addr!)} is not free` : `${formatCidr(p.subnet)} is full`;
        return this.fail(
          p,
          new IpamError(
            p.kind === 'claim' ? 'conflict' : 'full',
            `${why}: every peer owning part of it (${owners.map((o) => this.describe(o)).join(', ')}) said it has none to give`,
          ),
        );
      }
      p.reason =
        silent.length > 0 && dead.length === 0
          ? `waiting for ${silent.map((o) => this.describe(o)).join(', ')} to answer a request for space in ${formatCidr(p.subnet)}`
          : dead.length === owners.length
            ? `the rest of ${formatCidr(p.subnet)} is owned by unreachable peers (${owners.map((o) => this.describe(o)).join(', ')}); if they are gone for good, run: weft rmpeer NAME`
            : `the peers with space in ${formatCidr(p.subnet)} that are reachable have none to give; the others are unreachable: ${dead.map((o) => this.describe(o)).join(', ')}`;
      if (p.kind === 'claim' && dead.length === owners.length)
        p.reason = `${formatIp(p.addr!)} belongs to unreachable peer ${this.describe(owners[0])}; if it is gone for good, run: weft rmpeer ${owners[0]}`;
      return;
    }
    if (this.outstanding) {
      p.reason = `asking ${this.describe(this.outstanding.peer)} for space in ${formatCidr(p.subnet)}`;
      return;
    }
    // Prefer the owner that last reported the most free space (hints may be stale: a 0 is still worth asking).
    live.sort((a, b) => cmp(b.entry.free, a.entry.free) || cmp(f.sub(b.end, b.start), f.sub(a.end, a.start)));
    const donor = live[0].entry.owner;
    const id = ++this.requestId;
    this.outstanding = { id, peer: donor, at: Date.now() };
    const msg: Unicast = {
      t: 'req',
      id,
      s: f.toWire(p.subnet.start),
      p: p.subnet.prefix,
      ...(p.kind === 'claim' ? { a: f.toWire(p.addr!) } : {}),
    };
    this.channel.unicast(donor, pack(msg));
    p.reason =
      p.kind === 'claim'
        ? `asking ${this.describe(donor)} for ${formatIp(p.addr!)}`
        : `asking ${this.describe(donor)} for space in ${formatCidr(p.subnet)}`;
  }

  /** Donor side: give part of our free space in the subnet (the upper half of our largest aligned free block). */
  private onSpaceRequest(src: PeerName, m: { id: number; s: A; p: number; a?: A }): void {
    const f = this.family;
    const reply = (u: Unicast): void => {
      this.channel.unicast(src, pack(u));
    };
    if (!this.ring) return reply({ t: 'deny', id: m.id, why: 'no ring here yet', full: false });
    if (m.a !== undefined) {
      // Only an address of the ring: past its end, the last range's owner would seem to own it.
      const o = this.ring.origin;
      if (m.a < o.start || m.a >= o.end)
        return reply({ t: 'deny', id: m.id, why: `${f.formatIp(m.a)} is not in the ring's range`, full: false });
      const owner = this.ring.ownerOf(m.a);
      if (owner !== this.self)
        return reply({
          t: 'deny',
          id: m.id,
          why: `${f.formatIp(m.a)} is not owned by ${this.describe(this.self)}`,
          full: false,
        });
      const holder = this.byAddr.get(m.a);
      if (holder !== undefined)
        return reply({
          t: 'deny',
          id: m.id,
          why: `${f.formatIp(m.a)} is allocated to ${holder} on ${this.describe(this.self)}`,
          full: true,
        });
      return this.grantTo(src, m.id, m.a, f.add(m.a, f.one));
    }
    // Only addresses the requester can hand out: the subnet's host range. The free runs are the gaps
    // between the addresses in use (walked, not the addresses: an IPv6 range has 2^80 of them).
    const [subnetStart, subnetEnd] = f.hostRange({ start: m.s, prefix: m.p });
    const used = [...this.byAddr.keys()].sort(cmp);
    let best: [A, A] | null = null;
    const consider = (a: A, b: A) => {
      // The largest aligned blocks inside the free run [a, b).
      let x = a;
      while (x < b) {
        let size = f.one;
        while (f.mod(x, f.add(size, size)) === f.zero && f.add(x, f.add(size, size)) <= b) size = f.add(size, size);
        if (!best || size > best[1]) best = [x, size];
        x = f.add(x, size);
      }
    };
    for (const r of this.ring.rangesOf(this.self)) {
      const from = max(r.start, subnetStart);
      const to = min(r.end, subnetEnd);
      let a = from;
      for (const u of used) {
        if (u < from) continue;
        if (u >= to) break;
        if (a < u) consider(a, u);
        a = f.add(u, f.one);
      }
      if (a < to) consider(a, to);
    }
    if (!best) return reply({ t: 'deny', id: m.id, why: `no free space in ${f.formatIp(m.s)}/${m.p}`, full: true });
    const [blockStart, size] = best as [A, A];
    const give = size >= f.two ? f.half(size) : f.one;
    const blockEnd = f.add(blockStart, size);
    this.grantTo(src, m.id, f.sub(blockEnd, give), blockEnd);
  }

  private grantTo(peer: PeerName, id: number, start: A, end: A): void {
    const f = this.family;
    const changed = this.ring!.grant(this.self, start, end, peer);
    this.mesh.log.info(
      { to: peer, range: `${f.formatIp(start)}-${f.formatIp(f.sub(end, f.one))}` },
      'ipam: gave space',
    );
    // True free counts for what we kept, so nobody concludes from a stale hint that it is full.
    for (const r of this.ring!.rangesOf(this.self)) {
      const e = this.ring!.setFree(this.self, r.start, this.freeIn(r.start, r.end));
      if (e && !changed.some((c) => c.token === e.token)) changed.push(e);
      else if (e) changed[changed.findIndex((c) => c.token === e.token)] = e;
    }
    this.ringChanged(changed);
    this.channel.unicast(
      peer,
      pack({ t: 'grant', id, o: this.originWire(), r: changed.map((e) => entryToWire(e, f)) } satisfies Unicast),
    );
    this.freeDirty = true;
  }

  onUnicast(src: PeerName, payload: Uint8Array): void {
    const m = unpack(payload) as Unicast;
    if (typeof m !== 'object' || m === null || typeof (m as { t?: unknown }).t !== 'string')
      throw new Error('ipam unicast is malformed');
    switch (m.t) {
      case 'req': {
        const f = this.family;
        let s: A;
        let a: A | undefined;
        try {
          s = f.fromWire(m.s);
          a = m.a === undefined ? undefined : f.fromWire(m.a);
        } catch {
          throw new Error('ipam space request is malformed');
        }
        if (!Number.isInteger(m.id) || !Number.isInteger(m.p) || m.p < 0 || m.p > f.bits)
          throw new Error('ipam space request is malformed');
        return this.onSpaceRequest(src, { id: m.id, s, p: m.p, ...(a !== undefined ? { a } : {}) });
      }
      case 'grant':
      case 'ring': {
        const origin = decodeOrigin(this.family, m.o);
        const entries = (Array.isArray(m.r) ? m.r : []).map((w) => entryFromWire(w, this.family));
        if (m.t === 'grant' && this.outstanding?.id === m.id) this.outstanding = null;
        if (origin) this.receiveRing(origin, entries);
        this.retryPending();
        return;
      }
      case 'deny':
        if (this.outstanding?.id === m.id) {
          (m.full === true ? this.denied : this.unresponsive).set(this.outstanding.peer, Date.now());
          this.outstanding = null;
        }
        this.mesh.log.info({ from: src, why: String(m.why).slice(0, 200) }, 'ipam: space request denied');
        this.retryPending();
        return;
      case 'want':
        if (this.ring)
          this.channel.unicast(
            src,
            pack({
              t: 'ring',
              o: this.originWire(),
              r: this.ring.all().map((e) => entryToWire(e, this.family)),
            } satisfies Unicast),
          );
        return;
      default:
        throw new Error('ipam unicast has an unknown type');
    }
  }

  // ------------------------------------------------------------------ ring start

  private originWire(): unknown {
    const o = this.ring!.origin;
    return [this.family.toWire(o.start), this.family.toWire(o.end), o.seeds];
  }

  private createRing(seeds: PeerName[]): void {
    const r = this.config.range;
    this.ring = Ring.create({ start: r.start, end: this.family.cidrEnd(r), seeds: [...new Set(seeds)].sort() });
    this.paxos = null;
    this.mesh.log.info({ seeds: this.ring.origin.seeds }, 'ipam: ring created');
    this.freeDirty = true;
    this.ringChanged(this.ring.all());
  }

  /** Starts whatever gives us a ring: an election, or asking others. Lazy, as Weave: only when first needed. */
  private ensureRing(): void {
    if (this.ring) return;
    const init = this.config.init;
    if (init.kind === 'observer') {
      this.askForRing();
      return;
    }
    if (init.kind !== 'consensus') return;
    if (!this.paxos) this.paxos = new PaxosNode(nodeId(this.self, this.mesh.uid), init.quorum);
    if (!this.initStarted) {
      this.initStarted = true;
      this.paxos.propose();
    }
    this.paxos.think();
    this.afterPaxos();
  }

  private askForRing(): void {
    for (const n of this.mesh.neighbours(true)) this.channel.unicast(n.name, pack({ t: 'want' } satisfies Unicast));
  }

  private afterPaxos(): void {
    const value = this.paxos?.consensus();
    if (value) {
      this.createRing(value);
      this.retryPending();
      return;
    }
    if (this.paxos) this.channel.gossipUpdate(new IpamUpdate(this.family, null, [], { ...this.paxos.knows }));
  }

  private waitingForRingReason(): string {
    const init = this.config.init;
    if (init.kind === 'observer')
      return 'waiting for a peer that has the ring (this peer is an observer and does not vote)';
    if (init.kind === 'seed') return 'waiting for the ring from the seed peers';
    const heard = this.paxos?.electors() ?? [this.self];
    const inMesh = this.mesh.peers().map((p) => p.name);
    const silent = inMesh.filter((n) => !heard.includes(n));
    const source =
      init.peers > 0
        ? `${init.peers} peers given to launch, plus this one`
        : `--ipalloc-init consensus=${init.quorum * 2 - 1}`;
    let why = `awaiting consensus: heard from ${heard.length} of the ${init.quorum} peers needed (quorum from ${source}): ${heard.map((n) => this.describe(n)).join(', ')}`;
    if (silent.length > 0) why += `; not yet voting: ${silent.map((n) => this.describe(n)).join(', ')}`;
    if (inMesh.length < init.quorum)
      why += `; only ${inMesh.length} peer(s) in the mesh: connect the others (weft connect) or lower the quorum (--ipalloc-init consensus=N)`;
    return why;
  }

  private describe(name: PeerName): string {
    const nick = this.mesh.nicknameOf(name) ?? this.nicknames.get(name);
    return nick ? `${name}(${nick})` : name;
  }

  // ------------------------------------------------------------------ gossip

  private fullState(): IpamUpdate<A> | null {
    if (this.ring) return new IpamUpdate(this.family, this.ring.origin, this.ring.all(), null);
    if (this.paxos) return new IpamUpdate(this.family, null, [], this.paxos.knows);
    return null;
  }

  gossip(): GossipData | null {
    return this.fullState();
  }

  onGossip(update: Uint8Array): GossipData | null {
    const u = decodeUpdate(this.family, update);
    if (u.origin) {
      const changed = this.receiveRing(u.origin, u.entries);
      this.retryPending();
      return changed.length > 0 ? new IpamUpdate(this.family, this.ring!.origin, changed, null) : null;
    }
    if (u.paxos && !this.ring && this.config.init.kind === 'consensus') {
      if (!this.paxos) this.paxos = new PaxosNode(nodeId(this.self, this.mesh.uid), this.config.init.quorum);
      const learnt = this.paxos.update(u.paxos);
      const mine = this.paxos.think();
      const value = this.paxos.consensus();
      if (value) {
        this.createRing(value);
        this.retryPending();
        return null;
      }
      // Our answer must reach the proposer too, which the mesh's pass-it-on excludes (it sent us this): announce it to all.
      if (learnt || mine) this.channel.gossipUpdate(new IpamUpdate(this.family, null, [], { ...this.paxos.knows }));
      return null;
    }
    return null;
  }

  /** Merges a ring from a peer; returns the entries that changed ours. */
  private receiveRing(origin: RingOrigin<A>, entries: RingEntry<A>[]): RingEntry<A>[] {
    const f = this.family;
    if (!this.ring) {
      if (origin.start !== this.config.range.start || origin.end !== f.cidrEnd(this.config.range)) {
        this.noteConflict(
          `a peer uses the allocation range ${f.formatIp(origin.start)}-${f.formatIp(f.sub(origin.end, f.one))}, this one ${f.formatCidr(this.config.range)}: start all peers with the same --ipalloc-range${f.version === 6 ? '6' : ''}`,
        );
        return [];
      }
      this.ring = new Ring(origin);
      this.paxos = null;
      this.mesh.log.info({ seeds: origin.seeds }, 'ipam: ring received');
    } else if (!sameOrigin(this.ring.origin, origin)) {
      this.noteConflict(
        `a peer's ring was started by [${origin.seeds.join(', ')}], ours by [${this.ring.origin.seeds.join(', ')}]: two parts of the mesh started IPAM separately. Keep one: run weft reset on the peers of the other part`,
      );
      return [];
    }
    const changed = this.ring.merge(entries);
    if (changed.length === 0) return [];
    // A range we still use that the ring now gives to another peer: keep it, say so loudly.
    const reassert: RingEntry<A>[] = [];
    // One pass over the ranges for all changed entries (a large update must not cost n^2).
    const rangeAt = new Map(this.ring.ranges().map((x) => [x.start, x]));
    for (const e of changed) {
      if (e.owner === this.self) continue;
      const r = rangeAt.get(e.token)!;
      let inUse = 0;
      for (const a of this.byAddr.keys()) if (a >= r.start && a < r.end) inUse++;
      if (inUse > 0) {
        const kept = { ...e, owner: this.self, version: e.version + 1 };
        this.ring.merge([kept]);
        reassert.push(kept);
        this.noteConflict(
          `peer ${this.describe(e.owner)} took over ${f.formatIp(r.start)}-${f.formatIp(f.sub(r.end, f.one))}, where this peer has ${inUse} address(es) in use; kept it`,
        );
      }
    }
    this.ringChanged([...changed, ...reassert], false);
    if (reassert.length > 0) this.channel.gossipUpdate(new IpamUpdate(f, this.ring.origin, reassert, null));
    return changed;
  }

  private noteConflict(msg: string): void {
    if (!this.conflicts.includes(msg)) {
      this.conflicts.push(msg);
      if (this.conflicts.length > 10) this.conflicts.shift();
      this.mesh.log.warn({ conflict: msg }, 'ipam conflict');
    }
  }

  /** After a local or merged ring change: persist, and spread local changes. */
  private ringChanged(changed: RingEntry<A>[], spread = true): void {
    this.persist().catch((err: Error) => this.mesh.log.error({ err: err.message }, 'ipam: could not persist the ring'));
    if (spread && changed.length > 0)
      this.channel.gossipUpdate(new IpamUpdate(this.family, this.ring!.origin, changed, null));
  }

  digest(): Uint8Array {
    return pack({
      o: this.ring ? this.originWire() : null,
      d: this.ring ? this.ring.all().map((e) => [this.family.toWire(e.token), e.version]) : [],
    });
  }

  compareDigest(digest: Uint8Array): { update: GossipData | null; remoteHasMore: boolean } {
    const v = unpack(digest) as { o?: unknown; d?: unknown };
    if (typeof v !== 'object' || v === null || !Array.isArray(v.d)) throw new Error('ipam digest is malformed');
    const theirOrigin = decodeOrigin(this.family, v.o);
    if (!this.ring) return { update: this.fullState(), remoteHasMore: theirOrigin !== null };
    if (!theirOrigin) return { update: this.fullState(), remoteHasMore: false };
    if (!sameOrigin(theirOrigin, this.ring.origin)) return { update: null, remoteHasMore: false };
    const theirs = new Map<A, number>();
    for (const d of v.d as unknown[]) {
      if (!Array.isArray(d) || typeof d[1] !== 'number') continue;
      try {
        theirs.set(this.family.fromWire(d[0]), d[1]);
      } catch {
        // not a position of ours: skipped, as a malformed item always was
      }
    }
    const newer = this.ring.all().filter((e) => (theirs.get(e.token) ?? -1) < e.version);
    let remoteHasMore = false;
    for (const [token, version] of theirs) {
      const ours = this.ring.entries.get(token);
      if (!ours || ours.version < version) remoteHasMore = true;
    }
    return {
      update: newer.length > 0 ? new IpamUpdate(this.family, this.ring.origin, newer, null) : null,
      remoteHasMore,
    };
  }

  // ------------------------------------------------------------------ removal

  /** Peers known by this nickname (in the topology now, or seen there before). */
  peersNamed(nickname: string): PeerName[] {
    const out = new Set<PeerName>();
    for (const [name, nick] of this.nicknames) if (nick === nickname) out.add(name);
    for (const e of this.mesh.peers()) if (e.nickname === nickname) out.add(e.name);
    return [...out].sort();
  }

  /** Whether a peer owns part of the ring. */
  owns(peer: PeerName): boolean {
    return this.ring?.rangesOf(peer).some(() => true) ?? false;
  }

  /** Takes over every range of a peer that is gone for good. Refuses for a reachable peer. */
  async rmpeer(who: string): Promise<{ peer: PeerName; addresses: number }> {
    if (!this.ring) throw new IpamError('refused', 'IPAM has no ring yet: nothing to take over');
    const owners = new Set(this.ring.all().map((e) => e.owner));
    let peer: PeerName | undefined = owners.has(who) ? who : undefined;
    if (!peer) {
      const named = [...owners].filter((o) => this.nicknames.get(o) === who);
      if (named.length > 1)
        throw new IpamError(
          'invalid',
          `nickname "${who}" names several peers (${named.join(', ')}); use the peer name`,
        );
      peer = named[0];
    }
    if (!peer)
      throw new IpamError(
        'not-found',
        `no peer "${who}" owns part of the ring; owners: ${[...owners].map((o) => this.describe(o)).join(', ')}`,
      );
    if (peer === this.self) throw new IpamError('refused', 'cannot rmpeer this peer itself (use weft reset to leave)');
    if (this.mesh.isReachable(peer)) {
      throw new IpamError(
        'refused',
        `peer ${this.describe(peer)} is alive (reachable through the mesh); rmpeer is only for peers that are gone for good`,
      );
    }
    const f = this.family;
    const size = this.ring.rangesOf(peer).reduce((n, r) => f.add(n, f.sub(r.end, r.start)), f.zero);
    const changed = this.ring.transfer(peer, this.self);
    this.freeDirty = true;
    this.ringChanged(changed);
    await this.persist();
    this.retryPending();
    return { peer, addresses: f.approx(size) };
  }

  /** Leaving: hands our ranges to a live peer. Returns who got them (null when nobody could). */
  leave(): PeerName | null {
    if (!this.ring) return null;
    const live = this.mesh
      .neighbours(true)
      .map((n) => n.name)
      .sort();
    const heir = live.find((n) => this.ring!.rangesOf(n).length > 0) ?? live[0] ?? null;
    if (!heir) return null;
    const changed = this.ring.transfer(this.self, heir);
    this.ringChanged(changed);
    return heir;
  }

  // ------------------------------------------------------------------ status

  status(): IpamStatus {
    const now = Date.now();
    const f = this.family;
    const shares = this.ring?.shares() ?? new Map<PeerName, { size: A; free: A }>();
    const total = f.approx(f.sub(f.cidrEnd(this.config.range), this.config.range.start));
    let state: string;
    if (this.ring) state = 'ready';
    else if (this.pending.size === 0 && !this.initStarted)
      state = 'idle (the ring starts with the first allocation, or with weft prime)';
    else state = this.waitingForRingReason();
    return {
      range: f.formatCidr(this.config.range),
      defaultSubnet: f.formatCidr(this.config.defaultSubnet),
      init:
        this.config.init.kind === 'consensus'
          ? `consensus (quorum ${this.config.init.quorum})`
          : this.config.init.kind === 'seed'
            ? `seed (${this.config.init.seeds.join(', ')})`
            : 'observer',
      state,
      seeds: this.ring?.origin.seeds ?? [],
      totalAddresses: total,
      allocatedHere: this.byAddr.size,
      peers: [...shares].map(([name, s]) => ({
        name,
        nickname: this.mesh.nicknameOf(name) ?? this.nicknames.get(name) ?? null,
        addresses: f.approx(s.size),
        free: f.approx(s.free),
        percent: (100 * f.approx(s.size)) / total,
        reachable: name === this.self || this.mesh.isReachable(name),
      })),
      pending: [...this.pending].map((p) => ({
        kind: p.kind,
        ident: p.ident,
        subnet: f.formatCidr(p.subnet),
        addr: p.addr === undefined ? undefined : f.formatIp(p.addr),
        waitingMs: now - p.since,
        reason: p.reason,
      })),
      conflicts: [...this.conflicts],
      owned: [...this.owned].map(([ident, addrs]) => ({ ident, addresses: addrs.map((a) => f.formatIp(a)) })),
      entries:
        this.ring
          ?.all()
          .map((e) => ({ token: f.formatIp(e.token), owner: e.owner, version: e.version, free: f.approx(e.free) })) ??
        [],
    };
  }

  private persist(): Promise<void> {
    return this.config.store ? this.config.store.save(this.ring, this.owned) : Promise.resolve();
  }
}

export interface IpamStatus {
  range: string;
  defaultSubnet: string;
  init: string;
  state: string;
  seeds: PeerName[];
  totalAddresses: number;
  allocatedHere: number;
  peers: {
    name: PeerName;
    nickname: string | null;
    addresses: number;
    free: number;
    percent: number;
    reachable: boolean;
  }[];
  pending: { kind: string; ident: string; subnet: string; addr?: string; waitingMs: number; reason: string }[];
  conflicts: string[];
  owned: { ident: string; addresses: string[] }[];
  entries: { token: string; owner: PeerName; version: number; free: number }[];
}

const max = <A extends Position>(a: A, b: A): A => (a > b ? a : b);
const min = <A extends Position>(a: A, b: A): A => (a < b ? a : b);
const cmp = <A extends Position>(a: A, b: A): number => (a === b ? 0 : a < b ? -1 : 1);
