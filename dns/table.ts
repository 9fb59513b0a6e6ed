// The DNS name table: which names point at which addresses. Each peer owns one
// record of the names it registered (see PeerRecords: merged per origin by
// version and content; a removal is a newer record, so no tombstones); records
// of peers that left the mesh go after 30 s.
import { canonicalDnsName, canonicalIp } from '../net/validate.js';
import { readCheckedList, type Persist } from '../lib/json-file.js';
import {
  type MeshView,
  type PeerName,
  PeerRecords,
  comparePeerRecords,
  mergePeerRecords,
  type EntryCodec,
  type PeerRecord,
} from '../mesh/index.js';

const DNS_CHANNEL = 'dns';

export interface NameEntry {
  /** Lower-case, fully qualified, with the trailing dot. */
  hostname: string;
  container: string;
  /** IPv4 or IPv6, in its one form (an A or an AAAA answer). */
  ip: string;
}

export type NameRecord = PeerRecord<NameEntry>;

export function normaliseName(name: string): string {
  const n = name.trim().toLowerCase();
  return n.endsWith('.') ? n : `${n}.`;
}

const nameCodec: EntryCodec<NameEntry> = {
  toWire: (e) => [e.hostname, e.container, e.ip],
  fromWire(w) {
    if (!Array.isArray(w) || w.length !== 3) throw new Error('name entry is malformed');
    const [hostname, container, ip] = w as unknown[];
    if (
      typeof hostname !== 'string' ||
      typeof container !== 'string' ||
      container.length === 0 ||
      container.length > 256 ||
      typeof ip !== 'string'
    )
      throw new Error('name entry is malformed');
    // Only the canonical form: two spellings of one name must not be two entries.
    if (canonicalDnsName(hostname, 'name entry') !== hostname || canonicalIp(ip, 'name entry address') !== ip)
      throw new Error(`name entry ${hostname.slice(0, 80)} ${ip.slice(0, 20)} is not in canonical form`);
    return { hostname, container, ip };
  },
  key: (e) => JSON.stringify([e.hostname, e.container, e.ip]),
};

/** One name entry from the wire, checked (throws on anything not in its one form). */
export const nameEntryFromWire = (w: unknown): NameEntry => nameCodec.fromWire(w);

/** >0 when a supersedes b (records of one origin peer). */
export function compareRecords(a: NameRecord, b: NameRecord): number {
  return comparePeerRecords(nameCodec, a, b);
}

/** Service names and their VIPs (services/engine.ts), asked before the containers' names. */
export interface ServiceNames {
  /** A service's VIPs: of each family its backends have (IPv6 only where the router gives services one, --ipv6). */
  vipFor(hostname: string): { v4?: string; v6?: string } | null;
  nameOf(ip: string): string | null;
}

/** Lookups over name records (the CRDT's state), with an index rebuilt after changes. */
export class NameTable {
  private index: Map<string, { 4: string[]; 6: string[] }> | null = null;
  constructor(
    readonly records = new Map<PeerName, NameRecord>(),
    /** Names that are no container's: services answer with their VIP (services/), before any container of that name. */
    private readonly services: ServiceNames | null = null,
  ) {}

  /** Call after `records` changed. */
  touch(): void {
    this.index = null;
  }

  merge(incoming: Iterable<NameRecord>): NameRecord[] {
    const improved = mergePeerRecords(nameCodec, this.records, incoming);
    if (improved.length > 0) this.touch();
    return improved;
  }

  /** The name's addresses: of one family (4: A answers, 6: AAAA), or of both when none is given. */
  lookup(hostname: string, family?: 4 | 6): string[] {
    const vip = this.services?.vipFor(normaliseName(hostname));
    if (vip) {
      const v4 = vip.v4 !== undefined ? [vip.v4] : [];
      const v6 = vip.v6 !== undefined ? [vip.v6] : [];
      return family === 6 ? v6 : family === 4 ? v4 : [...v4, ...v6];
    }
    if (!this.index) {
      this.index = new Map();
      for (const r of this.records.values()) {
        for (const e of r.entries) {
          let l = this.index.get(e.hostname);
          if (!l) this.index.set(e.hostname, (l = { 4: [], 6: [] }));
          l[e.ip.includes(':') ? 6 : 4].push(e.ip);
        }
      }
    }
    const l = this.index.get(normaliseName(hostname));
    if (!l) return [];
    return family ? l[family] : [...l[4], ...l[6]];
  }

  reverse(ip: string): string[] {
    const service = this.services?.nameOf(ip);
    const out: string[] = service ? [service] : [];
    for (const r of this.records.values()) for (const e of r.entries) if (e.ip === ip) out.push(e.hostname);
    return out;
  }

  all(): (NameEntry & { origin: PeerName })[] {
    return [...this.records.values()].flatMap((r) => r.entries.map((e) => ({ ...e, origin: r.peer })));
  }
}

/** Names saved by a previous run; a damaged file stops the router with the reason (StateFileError). */
function loadNames(path: string): NameEntry[] {
  return readCheckedList(path, (e) => nameCodec.fromWire(nameCodec.toWire(e as NameEntry)));
}

/**
 * The name table as the `dns` gossip channel, with this peer's own record. With `persistPath`,
 * this peer's names are kept on disk, so a restarted router (even after kill -9) announces them
 * again instead of superseding them with an empty record.
 */
export class NameService extends PeerRecords<NameEntry> {
  readonly table: NameTable;
  private readonly persist?: Persist;

  constructor(mesh: MeshView, opts: { graceMs?: number; persist?: Persist; services?: ServiceNames } = {}) {
    super(mesh, DNS_CHANNEL, nameCodec, opts.graceMs ?? 30_000);
    this.persist = opts.persist;
    this.table = new NameTable(this.records, opts.services ?? null);
    this.onChange(() => this.table.touch());
    const saved = this.persist ? loadNames(this.persist.path) : [];
    if (saved.length > 0) this.setLocal(saved);
  }

  override setLocal(entries: NameEntry[]): void {
    super.setLocal(entries);
    this.persist?.writes.write(this.persist.path, entries);
  }

  /** Registers a name for a container's address; throws InvalidValue for a name or address that is not one. */
  add(hostname: string, container: string, ip: string): void {
    const e = nameCodec.fromWire([canonicalDnsName(hostname), container, canonicalIp(ip)]);
    if (this.local.some((x) => x.hostname === e.hostname && x.container === container && x.ip === e.ip)) return;
    this.setLocal([...this.local, e]);
  }

  /** Removes this peer's entries matching all the given parts; returns how many. */
  remove(match: { hostname?: string; container?: string; ip?: string }): number {
    const h = match.hostname ? normaliseName(match.hostname) : undefined;
    if (match.ip !== undefined) {
      try {
        match = { ...match, ip: canonicalIp(match.ip) }; // another spelling of an IPv6 address
      } catch {
        return 0; // no entry has it
      }
    }
    const keep = this.local.filter(
      (e) =>
        !(
          (h === undefined || e.hostname === h) &&
          (match.container === undefined || e.container === match.container) &&
          (match.ip === undefined || e.ip === match.ip)
        ),
    );
    const n = this.local.length - keep.length;
    if (n > 0) this.setLocal(keep);
    return n;
  }
}
