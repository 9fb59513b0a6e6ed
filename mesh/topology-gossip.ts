// The topology as a gossip channel: updates carry only the entries that changed,
// and anti-entropy compares (name, version, uid) digests instead of whole states.
import type { GossipData, Gossiper } from './gossip.js';
import { pack, unpack } from './messages.js';
import { isPeerName, type PeerName } from './peer-name.js';
import {
  entryFromWire,
  entryToWire,
  compareEntries,
  type DigestItem,
  type PeerEntry,
  type Topology,
} from './topology.js';

export const TOPOLOGY_CHANNEL = 'topology';
const MAX_ENTRIES_PER_UPDATE = 100_000;

export class TopologyUpdate implements GossipData {
  readonly entries: Map<PeerName, PeerEntry>;
  /** The same update usually goes to several neighbours: encode it once. */
  private encoded: Uint8Array | null = null;
  constructor(entries: Iterable<PeerEntry>) {
    this.entries = new Map();
    for (const e of entries) this.add(e);
  }
  private add(e: PeerEntry): void {
    const cur = this.entries.get(e.name);
    if (!cur || compareEntries(e, cur) > 0) this.entries.set(e.name, e);
  }
  encode(): Uint8Array {
    this.encoded ??= pack([...this.entries.values()].map(entryToWire));
    return this.encoded;
  }
  merge(other: GossipData): GossipData {
    const merged = new TopologyUpdate(this.entries.values());
    for (const e of (other as TopologyUpdate).entries.values()) merged.add(e);
    return merged;
  }
}

export function decodeTopologyUpdate(bytes: Uint8Array): PeerEntry[] {
  const v = unpack(bytes);
  if (!Array.isArray(v) || v.length > MAX_ENTRIES_PER_UPDATE)
    throw new Error('topology update is not a list of entries');
  return v.map(entryFromWire);
}

function decodeDigest(bytes: Uint8Array): DigestItem[] {
  const v = unpack(bytes);
  if (!Array.isArray(v) || v.length > MAX_ENTRIES_PER_UPDATE) throw new Error('topology digest is not a list');
  return v.map((d) => {
    if (
      !Array.isArray(d) ||
      d.length !== 3 ||
      !isPeerName(d[0]) ||
      !Number.isSafeInteger(d[1]) ||
      typeof d[2] !== 'string'
    ) {
      throw new Error('malformed topology digest item');
    }
    return d as DigestItem;
  });
}

export interface TopologyGossipHooks {
  self: PeerName;
  /** An entry about ourselves from an older incarnation or a stale copy arrived. */
  onSelfEntry(e: PeerEntry): void;
  onChanged(): void;
  /** Full state instead of deltas: the baseline the benchmark compares against. */
  fullState: boolean;
}

export class TopologyGossiper implements Gossiper {
  constructor(
    private readonly topology: Topology,
    private readonly hooks: TopologyGossipHooks,
  ) {}

  gossip(): GossipData | null {
    return new TopologyUpdate(this.topology.all());
  }

  onGossip(update: Uint8Array): GossipData | null {
    const entries = decodeTopologyUpdate(update);
    const others: PeerEntry[] = [];
    for (const e of entries) {
      if (e.name === this.hooks.self) this.hooks.onSelfEntry(e);
      else others.push(e);
    }
    const improved = this.topology.merge(others);
    if (improved.length === 0) return null;
    this.hooks.onChanged();
    return this.hooks.fullState ? this.gossip() : new TopologyUpdate(improved);
  }

  digest(): Uint8Array {
    return pack(this.topology.digest());
  }

  compareDigest(digest: Uint8Array): { update: GossipData | null; remoteHasMore: boolean } {
    const { newer, remoteHasMore } = this.topology.compare(decodeDigest(digest));
    return { update: newer.length > 0 ? new TopologyUpdate(newer) : null, remoteHasMore };
  }
}
