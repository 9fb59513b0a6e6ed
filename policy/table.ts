// The policy table: every security group rule in the mesh, a CRDT on its own
// gossip channel. Each rule id holds one register (version, origin peer, the rule
// or a tombstone); of two registers the one with the higher version wins, then the
// higher origin name, then the larger content, so merging is commutative,
// associative and idempotent and every peer converges on the same table. Any peer
// may add or remove any rule; removals are tombstones that stay (a rule removed
// must not come back from a peer that was away). Persisted in the data directory.
import { createHash, randomBytes } from 'node:crypto';
import type { Gossip, GossipData, Gossiper } from '../router/mesh/gossip.js';
import type { Mesh } from '../router/mesh/mesh.js';
import { pack, unpack } from '../router/mesh/messages.js';
import { isPeerName, type PeerName } from '../router/mesh/peer-name.js';
import { readJsonList, writeJsonAtomically } from '../router/json-file.js';
import { RuleError, checkRule, type Rule } from './rules.js';

export const POLICY_CHANNEL = 'policy';
const MAX_ENTRIES = 100_000;

export interface PolicyEntry {
  id: string;
  version: number;
  origin: PeerName;
  /** null: removed. */
  rule: Rule | null;
}

/** >0 when a wins over b (same id). */
export function compareEntries(a: PolicyEntry, b: PolicyEntry): number {
  if (a.version !== b.version) return a.version - b.version;
  if (a.origin !== b.origin) return a.origin > b.origin ? 1 : -1;
  const ka = JSON.stringify(a.rule);
  const kb = JSON.stringify(b.rule);
  return ka === kb ? 0 : ka > kb ? 1 : -1;
}

/** Merges entries into a map; returns those that changed it. */
export function mergeEntries(into: Map<string, PolicyEntry>, incoming: Iterable<PolicyEntry>): PolicyEntry[] {
  const changed: PolicyEntry[] = [];
  for (const e of incoming) {
    const cur = into.get(e.id);
    if (!cur || compareEntries(e, cur) > 0) {
      into.set(e.id, e);
      changed.push(e);
    }
  }
  return changed;
}

function toWire(e: PolicyEntry): unknown {
  return [e.id, e.version, e.origin, e.rule];
}

export function entryFromWire(w: unknown): PolicyEntry {
  if (!Array.isArray(w) || w.length !== 4) throw new RuleError('policy entry is malformed');
  const [id, version, origin, rule] = w as unknown[];
  if (typeof id !== 'string' || typeof version !== 'number' || !Number.isSafeInteger(version) || version < 1) throw new RuleError('policy entry is malformed');
  if (typeof origin !== 'string' || !isPeerName(origin)) throw new RuleError('policy entry origin is malformed');
  const r = rule === null ? null : checkRule(rule);
  if (r && r.id !== id) throw new RuleError('policy entry id does not match its rule');
  return { id, version, origin, rule: r };
}

class PolicyUpdate implements GossipData {
  constructor(readonly entries: PolicyEntry[]) {}
  encode(): Uint8Array {
    return pack(this.entries.map(toWire));
  }
  merge(other: GossipData): GossipData {
    const m = new Map(this.entries.map((e) => [e.id, e]));
    mergeEntries(m, (other as PolicyUpdate).entries);
    return new PolicyUpdate([...m.values()]);
  }
}

export class PolicyTable implements Gossiper {
  private readonly entries = new Map<string, PolicyEntry>();
  private readonly channel: Gossip;
  private readonly listeners: (() => void)[] = [];

  constructor(
    private readonly mesh: Mesh,
    private readonly persistPath?: string,
  ) {
    if (persistPath) {
      const saved: PolicyEntry[] = [];
      for (const w of readJsonList<unknown>(persistPath)) {
        try {
          saved.push(entryFromWire(w));
        } catch {
          // a damaged entry: the mesh has it anyway
        }
      }
      mergeEntries(this.entries, saved);
    }
    this.channel = mesh.registerChannel(POLICY_CHANNEL, this);
  }

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  /** The rules in force, in id order. */
  rules(): Rule[] {
    return [...this.entries.values()].filter((e) => e.rule !== null).map((e) => e.rule!).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  all(): PolicyEntry[] {
    return [...this.entries.values()];
  }

  static newId(): string {
    return randomBytes(4).toString('hex');
  }

  add(rule: Rule): PolicyEntry {
    const cur = this.entries.get(rule.id);
    const e: PolicyEntry = { id: rule.id, version: (cur?.version ?? 0) + 1, origin: this.mesh.name, rule: checkRule(rule) };
    this.apply([e]);
    return e;
  }

  /** Removes a rule; false when there is no such rule in force. */
  remove(id: string): boolean {
    const cur = this.entries.get(id);
    if (!cur || cur.rule === null) return false;
    this.apply([{ id, version: cur.version + 1, origin: this.mesh.name, rule: null }]);
    return true;
  }

  private apply(es: PolicyEntry[]): void {
    const changed = mergeEntries(this.entries, es);
    if (changed.length === 0) return;
    this.changed();
    this.channel.gossipUpdate(new PolicyUpdate(changed));
  }

  private changed(): void {
    if (this.persistPath) writeJsonAtomically(this.persistPath, [...this.entries.values()].map(toWire));
    for (const fn of this.listeners) fn();
  }

  // ---- Gossiper

  gossip(): GossipData | null {
    return this.entries.size > 0 ? new PolicyUpdate([...this.entries.values()]) : null;
  }

  onGossip(update: Uint8Array): GossipData | null {
    const raw = unpack(update);
    if (!Array.isArray(raw)) throw new RuleError('policy update is not a list');
    if (raw.length > MAX_ENTRIES) throw new RuleError('policy update is too large');
    const incoming = raw.map(entryFromWire); // one bad entry rejects the update whole
    if (this.entries.size + incoming.length > MAX_ENTRIES && incoming.some((e) => !this.entries.has(e.id))) throw new RuleError('policy table is full');
    const changed = mergeEntries(this.entries, incoming);
    if (changed.length === 0) return null;
    this.changed();
    return new PolicyUpdate(changed);
  }

  digest(): Uint8Array {
    const h = createHash('sha256');
    for (const e of [...this.entries.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) h.update(`${e.id}:${e.version}:${e.origin}:${JSON.stringify(e.rule)}\n`);
    return h.digest();
  }

  compareDigest(digest: Uint8Array): { update: GossipData | null; remoteHasMore: boolean } {
    const same = Buffer.from(digest).equals(Buffer.from(this.digest()));
    return same ? { update: null, remoteHasMore: false } : { update: this.gossip(), remoteHasMore: true };
  }
}
