// The DNS name table: which names point at which addresses. Each peer owns one
// record of the names it registered (with a version) and only it changes that
// record; records merge per origin by (version, content), a total order, so the
// merge is commutative, associative and idempotent. A removal is a new version
// without the name, so no tombstones are needed. Records of peers that left the
// mesh are dropped after a grace period.
import type { Gossip, GossipData, Gossiper } from '../router/mesh/gossip.js';
import type { Mesh } from '../router/mesh/mesh.js';
import { pack, unpack } from '../router/mesh/messages.js';
import { isPeerName, type PeerName } from '../router/mesh/peer-name.js';

export const DNS_CHANNEL = 'dns';

export interface NameEntry {
  /** Lower-case, fully qualified, with the trailing dot. */
  hostname: string;
  container: string;
  ip: string;
}

export interface NameRecord {
  origin: PeerName;
  version: number;
  entries: NameEntry[];
}

const IP = /^\d{1,3}(\.\d{1,3}){3}$/;

export function normaliseName(name: string): string {
  const n = name.trim().toLowerCase();
  return n.endsWith('.') ? n : `${n}.`;
}

function contentKey(r: NameRecord): string {
  return JSON.stringify(r.entries.map((e) => [e.hostname, e.container, e.ip]).sort());
}

/** >0 when a supersedes b (records of one origin). */
export function compareRecords(a: NameRecord, b: NameRecord): number {
  if (a.version !== b.version) return a.version - b.version;
  const ka = contentKey(a);
  const kb = contentKey(b);
  return ka === kb ? 0 : ka > kb ? 1 : -1;
}

export class NameUpdate implements GossipData {
  constructor(readonly records: NameRecord[]) {}
  encode(): Uint8Array {
    return pack(this.records.map((r) => [r.origin, r.version, r.entries.map((e) => [e.hostname, e.container, e.ip])]));
  }
  merge(other: GossipData): GossipData {
    const m = new Map(this.records.map((r) => [r.origin, r]));
    for (const r of (other as NameUpdate).records) {
      const cur = m.get(r.origin);
      if (!cur || compareRecords(r, cur) > 0) m.set(r.origin, r);
    }
    return new NameUpdate([...m.values()]);
  }
}

export function decodeNameUpdate(bytes: Uint8Array): NameRecord[] {
  const v = unpack(bytes);
  if (!Array.isArray(v) || v.length > 100_000) throw new Error('name update is not a list');
  return v.map((w) => {
    if (!Array.isArray(w) || w.length !== 3) throw new Error('name record is malformed');
    const [origin, version, entries] = w as unknown[];
    if (!isPeerName(origin) || !Number.isSafeInteger(version) || (version as number) < 0 || !Array.isArray(entries) || entries.length > 100_000) {
      throw new Error('name record is malformed');
    }
    return {
      origin,
      version: version as number,
      entries: entries.map((e) => {
        if (!Array.isArray(e) || e.length !== 3) throw new Error('name entry is malformed');
        const [hostname, container, ip] = e as unknown[];
        if (typeof hostname !== 'string' || hostname.length > 255 || !hostname.endsWith('.') || typeof container !== 'string' || container.length > 256 || typeof ip !== 'string' || !IP.test(ip)) {
          throw new Error('name entry is malformed');
        }
        return { hostname, container, ip };
      }),
    };
  });
}

/** The pure CRDT: records by origin. */
export class NameTable {
  readonly records = new Map<PeerName, NameRecord>();
  /** name -> addresses, rebuilt on first lookup after a change. */
  private index: Map<string, string[]> | null = null;

  /** Call after changing `records` directly. */
  touch(): void {
    this.index = null;
  }

  merge(incoming: Iterable<NameRecord>): NameRecord[] {
    const improved: NameRecord[] = [];
    for (const r of incoming) {
      const cur = this.records.get(r.origin);
      if (!cur || compareRecords(r, cur) > 0) {
        this.records.set(r.origin, r);
        improved.push(r);
      }
    }
    if (improved.length > 0) this.touch();
    return improved;
  }

  lookup(hostname: string): string[] {
    if (!this.index) {
      this.index = new Map();
      for (const r of this.records.values()) {
        for (const e of r.entries) {
          const l = this.index.get(e.hostname);
          if (l) l.push(e.ip);
          else this.index.set(e.hostname, [e.ip]);
        }
      }
    }
    return this.index.get(normaliseName(hostname)) ?? [];
  }

  reverse(ip: string): string[] {
    const out: string[] = [];
    for (const r of this.records.values()) for (const e of r.entries) if (e.ip === ip) out.push(e.hostname);
    return out;
  }

  all(): (NameEntry & { origin: PeerName })[] {
    return [...this.records.values()].flatMap((r) => r.entries.map((e) => ({ ...e, origin: r.origin })));
  }
}

/** The table as a gossip channel of the mesh, with this peer's own record. */
export class NameService implements Gossiper {
  readonly table = new NameTable();
  private readonly channel: Gossip;
  private version = 0;
  private readonly goneAt = new Map<PeerName, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly mesh: Mesh,
    private readonly graceMs = 30_000,
  ) {
    this.channel = mesh.registerChannel(DNS_CHANNEL, this);
    this.table.records.set(mesh.name, { origin: mesh.name, version: 0, entries: [] });
    mesh.on('peers-gone', (gone: PeerName[]) => {
      for (const p of gone) if (this.table.records.has(p)) this.goneAt.set(p, Date.now());
    });
    this.timer = setInterval(() => {
      for (const [p, at] of this.goneAt) {
        if (this.mesh.topology.get(p)) this.goneAt.delete(p);
        else if (Date.now() - at >= this.graceMs) {
          this.goneAt.delete(p);
          this.table.records.delete(p);
          this.table.touch();
        }
      }
    }, Math.min(5000, graceMs));
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  get local(): NameEntry[] {
    return this.table.records.get(this.mesh.name)!.entries;
  }

  setLocal(entries: NameEntry[]): void {
    this.version = Math.max(this.version, this.table.records.get(this.mesh.name)?.version ?? 0) + 1;
    const rec = { origin: this.mesh.name, version: this.version, entries };
    this.table.records.set(this.mesh.name, rec);
    this.table.touch();
    this.channel.gossipUpdate(new NameUpdate([rec]));
  }

  add(hostname: string, container: string, ip: string): void {
    const e = { hostname: normaliseName(hostname), container, ip };
    if (this.local.some((x) => x.hostname === e.hostname && x.container === container && x.ip === ip)) return;
    this.setLocal([...this.local, e]);
  }

  /** Removes this peer's entries matching all the given parts; returns how many. */
  remove(match: { hostname?: string; container?: string; ip?: string }): number {
    const h = match.hostname ? normaliseName(match.hostname) : undefined;
    const keep = this.local.filter((e) => !((h === undefined || e.hostname === h) && (match.container === undefined || e.container === match.container) && (match.ip === undefined || e.ip === match.ip)));
    const n = this.local.length - keep.length;
    if (n > 0) this.setLocal(keep);
    return n;
  }

  gossip(): GossipData | null {
    return new NameUpdate([...this.table.records.values()]);
  }

  onGossip(update: Uint8Array): GossipData | null {
    const improved: NameRecord[] = [];
    for (const r of decodeNameUpdate(update)) {
      if (r.origin === this.mesh.name) {
        // An earlier incarnation's record: ours supersedes it.
        if (r.version >= this.version) {
          this.version = r.version;
          this.setLocal(this.local);
        }
        continue;
      }
      improved.push(...this.table.merge([r]));
      this.goneAt.delete(r.origin);
    }
    return improved.length > 0 ? new NameUpdate(improved) : null;
  }
}
