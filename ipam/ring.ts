// The IPAM ring: the allocation range cut at tokens; each token starts a range
// that runs to the next token and is owned by one peer. Entries merge per token
// by (version, owner, free), a total order, so any two rings of the same origin
// combine the same way in any order. Only an owner changes its entries (or a
// takeover of a peer that is gone, which jumps the version).
import { isPeerName, type PeerName } from '../mesh/index.js';
import type { Addr } from '../net/addr.js';

export interface RingEntry {
  token: Addr;
  owner: PeerName;
  version: number;
  /** Free addresses in the range, as last reported by its owner: a hint for choosing whom to ask for space. */
  free: number;
}

/** What a ring was made from: the same for every peer of one IPAM domain. */
export interface RingOrigin {
  start: Addr;
  end: Addr;
  /** The peers the range was first divided among (consensus value or seed list), sorted. */
  seeds: PeerName[];
}

export function sameOrigin(a: RingOrigin, b: RingOrigin): boolean {
  return (
    a.start === b.start &&
    a.end === b.end &&
    a.seeds.length === b.seeds.length &&
    a.seeds.every((s, i) => s === b.seeds[i])
  );
}

export function compareRingEntries(a: RingEntry, b: RingEntry): number {
  if (a.version !== b.version) return a.version - b.version;
  if (a.owner !== b.owner) return a.owner > b.owner ? 1 : -1;
  return a.free - b.free;
}

const TRANSFER_VERSION_JUMP = 100;

export class Ring {
  readonly entries = new Map<Addr, RingEntry>();
  private sorted: Addr[] | null = null;

  constructor(readonly origin: RingOrigin) {}

  /** Divides the whole range among the seeds (recursive halving, aligned where the range allows). */
  static create(origin: RingOrigin): Ring {
    const ring = new Ring(origin);
    const peers = [...new Set(origin.seeds)].sort();
    const claim = (start: Addr, end: Addr, ps: PeerName[]) => {
      if (ps.length === 1 || end - start < 2) {
        ring.entries.set(start, { token: start, owner: ps[0], version: 1, free: end - start });
        return;
      }
      const mid = start + Math.floor((end - start) / 2);
      const half = Math.floor(ps.length / 2);
      claim(start, mid, ps.slice(0, half));
      claim(mid, end, ps.slice(half));
    };
    claim(origin.start, origin.end, peers);
    return ring;
  }

  private tokens(): Addr[] {
    this.sorted ??= [...this.entries.keys()].sort((a, b) => a - b);
    return this.sorted;
  }

  /** Merges entries; returns those that changed our ring. */
  merge(incoming: Iterable<RingEntry>): RingEntry[] {
    const changed: RingEntry[] = [];
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
  entryFor(addr: Addr): RingEntry | undefined {
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

  ownerOf(addr: Addr): PeerName | undefined {
    return this.entryFor(addr)?.owner;
  }

  /** Every range as [start, end) with its entry, in address order. */
  ranges(): { start: Addr; end: Addr; entry: RingEntry }[] {
    const t = this.tokens();
    return t.map((tok, i) => ({
      start: tok,
      end: i + 1 < t.length ? t[i + 1] : this.origin.end,
      entry: this.entries.get(tok)!,
    }));
  }

  rangesOf(peer: PeerName): { start: Addr; end: Addr; entry: RingEntry }[] {
    return this.ranges().filter((r) => r.entry.owner === peer);
  }

  /** Gives [start, end), which `self` owns, to `to`. Returns the changed entries. */
  grant(self: PeerName, start: Addr, end: Addr, to: PeerName): RingEntry[] {
    const holder = this.entryFor(start);
    if (!holder || holder.owner !== self) throw new Error('cannot grant a range this peer does not own');
    const changed: RingEntry[] = [];
    const set = (e: RingEntry) => {
      if (!this.entries.has(e.token)) this.sorted = null;
      this.entries.set(e.token, e);
      changed.push(e);
    };
    // The part after the grant stays ours: it needs its own token unless one is there already.
    if (end < this.origin.end && !this.entries.has(end)) {
      const after = this.entryFor(end)!;
      set({ token: end, owner: after.owner, version: after.version + 1, free: 0 });
    }
    const cur = this.entries.get(start);
    set({ token: start, owner: to, version: (cur?.version ?? holder.version) + 1, free: end - start });
    return changed;
  }

  /** Hands every range of `from` to `to` (leaving, or taking over a dead peer). The version jump beats concurrent small edits. */
  transfer(from: PeerName, to: PeerName): RingEntry[] {
    const changed: RingEntry[] = [];
    for (const e of this.entries.values()) {
      if (e.owner !== from) continue;
      const n = { ...e, owner: to, version: e.version + TRANSFER_VERSION_JUMP };
      this.entries.set(e.token, n);
      changed.push(n);
    }
    return changed;
  }

  /** The owner updates the free hint of its entry. */
  setFree(self: PeerName, token: Addr, free: number): RingEntry | null {
    const e = this.entries.get(token);
    if (!e || e.owner !== self || e.free === free) return null;
    const n = { ...e, version: e.version + 1, free };
    this.entries.set(token, n);
    return n;
  }

  /** Sizes owned per peer. */
  shares(): Map<PeerName, { size: number; free: number }> {
    const m = new Map<PeerName, { size: number; free: number }>();
    for (const r of this.ranges()) {
      const s = m.get(r.entry.owner) ?? { size: 0, free: 0 };
      s.size += r.end - r.start;
      s.free += r.entry.free;
      m.set(r.entry.owner, s);
    }
    return m;
  }

  all(): RingEntry[] {
    return this.tokens().map((t) => this.entries.get(t)!);
  }
}

/** Validates ring entries from the network. */
export function entryFromWire(w: unknown): RingEntry {
  if (!Array.isArray(w) || w.length !== 4) throw new Error('ring entry is not a 4-tuple');
  const [token, owner, version, free] = w as unknown[];
  const u32 = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
  if (!u32(token) || !u32(free) || !(typeof version === 'number' && Number.isSafeInteger(version) && version >= 0)) {
    throw new Error('ring entry has invalid numbers');
  }
  if (typeof owner !== 'string' || !isPeerName(owner)) throw new Error('ring entry has an invalid owner');
  return { token: token as number, owner, version: version as number, free: free as number };
}

export function entryToWire(e: RingEntry): unknown[] {
  return [e.token, e.owner, e.version, e.free];
}
