// The IPAM ring: the allocation range cut at tokens; each token starts a range
// that runs to the next token and is owned by one peer. Entries merge per token
// by (version, owner, free), a total order, so any two rings of the same origin
// combine the same way in any order. Only an owner changes its entries (or a
// takeover of a peer that is gone, which jumps the version).
//
// One ring per address family: IPv4 positions are numbers (32 bits), IPv6 ones
// bigints (128 bits). The ring's laws do not depend on which; only its arithmetic
// and its wire form do (net/family.ts).
import { isPeerName, type PeerName } from '../mesh/index.js';
import type { Addr } from '../net/addr.js';
import { familyOf, IPV4, type IpFamily, type Position } from '../net/family.js';

export interface RingEntry<A extends Position = Addr> {
  token: A;
  owner: PeerName;
  version: number;
  /** Free addresses in the range, as last reported by its owner: a hint for choosing whom to ask for space. */
  free: A;
}

/** What a ring was made from: the same for every peer of one IPAM domain. */
export interface RingOrigin<A extends Position = Addr> {
  start: A;
  end: A;
  /** The peers the range was first divided among (consensus value or seed list), sorted. */
  seeds: PeerName[];
}

export function sameOrigin<A extends Position>(a: RingOrigin<A>, b: RingOrigin<A>): boolean {
  return (
    a.start === b.start &&
    a.end === b.end &&
    a.seeds.length === b.seeds.length &&
    a.seeds.every((s, i) => s === b.seeds[i])
  );
}

export function compareRingEntries<A extends Position>(a: RingEntry<A>, b: RingEntry<A>): number {
  if (a.version !== b.version) return a.version - b.version;
  if (a.owner !== b.owner) return a.owner > b.owner ? 1 : -1;
  return a.free === b.free ? 0 : a.free > b.free ? 1 : -1;
}

const TRANSFER_VERSION_JUMP = 100;

export class Ring<A extends Position = Addr> {
  readonly entries = new Map<A, RingEntry<A>>();
  private sorted: A[] | null = null;
  readonly space: IpFamily<A>;

  constructor(readonly origin: RingOrigin<A>) {
    this.space = familyOf(origin.start);
  }

  /** Divides the whole range among the seeds (recursive halving, aligned where the range allows). */
  static create<A extends Position>(origin: RingOrigin<A>): Ring<A> {
    const ring = new Ring(origin);
    const sp = ring.space;
    const peers = [...new Set(origin.seeds)].sort();
    const claim = (start: A, end: A, ps: PeerName[]) => {
      if (ps.length === 1 || sp.sub(end, start) < sp.two) {
        ring.entries.set(start, { token: start, owner: ps[0], version: 1, free: sp.sub(end, start) });
        return;
      }
      const mid = sp.add(start, sp.half(sp.sub(end, start)));
      const half = Math.floor(ps.length / 2);
      claim(start, mid, ps.slice(0, half));
      claim(mid, end, ps.slice(half));
    };
    claim(origin.start, origin.end, peers);
    return ring;
  }

  private tokens(): A[] {
    this.sorted ??= [...this.entries.keys()].sort((a, b) => (a === b ? 0 : a < b ? -1 : 1));
    return this.sorted;
  }

  /** Merges entries; returns those that changed our ring. */
  merge(incoming: Iterable<RingEntry<A>>): RingEntry<A>[] {
    const changed: RingEntry<A>[] = [];
    for (const e of incoming) {
      if (e.token < this.origin.start || e.token >= this.origin.end) continue;
      const cur = this.entries.get(e.token);
      if (!cur || compareRingEntries(e, cur) > 0) {
        if (!cur) this.sorted = null;
        this.entries.set(e.token, e);
        changed.push(e);
      }
    }
    return changed;
  }

  /** The entry whose range holds addr. */
  entryFor(addr: A): RingEntry<A> | undefined {
    const t = this.tokens();
    let lo = 0;
    let hi = t.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (t[mid] <= addr) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found < 0 ? undefined : this.entries.get(t[found]);
  }

  ownerOf(addr: A): PeerName | undefined {
    return this.entryFor(addr)?.owner;
  }

  /** Every range as [start, end) with its entry, in address order. */
  ranges(): { start: A; end: A; entry: RingEntry<A> }[] {
    const t = this.tokens();
    return t.map((tok, i) => ({
      start: tok,
      end: i + 1 < t.length ? t[i + 1] : this.origin.end,
      entry: this.entries.get(tok)!,
    }));
  }

  rangesOf(peer: PeerName): { start: A; end: A; entry: RingEntry<A> }[] {
    return this.ranges().filter((r) => r.entry.owner === peer);
  }

  /** Gives [start, end), which `self` owns, to `to`. Returns the changed entries. */
  grant(self: PeerName, start: A, end: A, to: PeerName): RingEntry<A>[] {
    if (start < this.origin.start || end > this.origin.end || !(start < end))
      throw new Error('cannot grant a range outside the ring');
    const holder = this.entryFor(start);
    if (!holder || holder.owner !== self) throw new Error('cannot grant a range this peer does not own');
    const changed: RingEntry<A>[] = [];
    const set = (e: RingEntry<A>) => {
      if (!this.entries.has(e.token)) this.sorted = null;
      this.entries.set(e.token, e);
      changed.push(e);
    };
    // The part after the grant stays ours: it needs its own token unless one is there already.
    if (end < this.origin.end && !this.entries.has(end)) {
      const after = this.entryFor(end)!;
      set({ token: end, owner: after.owner, version: after.version + 1, free: this.space.zero });
    }
    const cur = this.entries.get(start);
    set({ token: start, owner: to, version: (cur?.version ?? holder.version) + 1, free: this.space.sub(end, start) });
    return changed;
  }

  /** Hands every range of `from` to `to` (leaving, or taking over a dead peer). The version jump beats concurrent small edits. */
  transfer(from: PeerName, to: PeerName): RingEntry<A>[] {
    const changed: RingEntry<A>[] = [];
    for (const e of this.entries.values()) {
      if (e.owner !== from) continue;
      const n = { ...e, owner: to, version: e.version + TRANSFER_VERSION_JUMP };
      this.entries.set(e.token, n);
      changed.push(n);
    }
    return changed;
  }

  /** The owner updates the free hint of its entry. */
  setFree(self: PeerName, token: A, free: A): RingEntry<A> | null {
    const e = this.entries.get(token);
    if (!e || e.owner !== self || e.free === free) return null;
    const n = { ...e, version: e.version + 1, free };
    this.entries.set(token, n);
    return n;
  }

  /** Sizes owned per peer. */
  shares(): Map<PeerName, { size: A; free: A }> {
    const sp = this.space;
    const m = new Map<PeerName, { size: A; free: A }>();
    for (const r of this.ranges()) {
      const s = m.get(r.entry.owner) ?? { size: sp.zero, free: sp.zero };
      s.size = sp.add(s.size, sp.sub(r.end, r.start));
      s.free = sp.add(s.free, r.entry.free);
      m.set(r.entry.owner, s);
    }
    return m;
  }

  all(): RingEntry<A>[] {
    return this.tokens().map((t) => this.entries.get(t)!);
  }
}

/** Validates ring entries from the network (IPv4 unless another space is given). */
export function entryFromWire<A extends Position = Addr>(
  w: unknown,
  space: IpFamily<A> = IPV4 as unknown as IpFamily<A>,
): RingEntry<A> {
  if (!Array.isArray(w) || w.length !== 4) throw new Error('ring entry is not a 4-tuple');
  const [token, owner, version, free] = w as unknown[];
  let t: A;
  let f: A;
  try {
    t = space.fromWire(token);
    f = space.fromWire(free);
  } catch {
    throw new Error('ring entry has invalid numbers');
  }
  if (!(typeof version === 'number' && Number.isSafeInteger(version) && version >= 0))
    throw new Error('ring entry has invalid numbers');
  if (typeof owner !== 'string' || !isPeerName(owner)) throw new Error('ring entry has an invalid owner');
  return { token: t, owner, version, free: f };
}

export function entryToWire<A extends Position>(e: RingEntry<A>, space: IpFamily<A>): unknown[] {
  return [space.toWire(e.token), e.owner, e.version, space.toWire(e.free)];
}
