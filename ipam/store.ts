// IPAM's persistent state in the data directory (lmdb, transactional): the
// ring and every container's addresses, so a restarted router, even after
// kill -9, hands out nothing twice.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { open, type RootDatabase } from 'lmdb';
import { join } from 'node:path';
import { formatCidr, type Addr, type Cidr } from '../net/addr.js';
import type { Addr6 } from '../net/addr6.js';
import { Ring, entryFromWire, entryToWire } from './ring.js';
import { IPV4, IPV6, type CidrOf, type IpFamily, type Position } from '../net/family.js';
import type { PeerName } from '../mesh/index.js';
import type { AllocatorStore } from './allocator.js';

const FORMAT = 1;

interface Meta {
  format: number;
  range: string;
  peer: PeerName;
}

/**
 * Reads the whole store once in a child process. lmdb is native code: a damaged file can abort the
 * process that opens it, which must not be the router (it would crash at every start, saying
 * nothing useful). Throws with what to do when the child does not come back cleanly.
 */
function checkStoreReadable(path: string): void {
  if (!existsSync(path)) return;
  const lmdb = createRequire(import.meta.url).resolve('lmdb');
  const script = `const { open } = require(${JSON.stringify(lmdb)}); const db = open({ path: ${JSON.stringify(path)}, compression: false, readOnly: true }); let n = 0; for (const e of db.getRange()) { n++; } db.close(); process.stdout.write(String(n));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
  if (r.status === 0) return;
  const how = r.signal
    ? `reading it crashed (${r.signal})`
    : r.error
      ? r.error.message
      : (r.stderr.split('\n').find((l) => /Error/.test(l)) ?? `exit code ${r.status}`).trim();
  throw new Error(
    `the IPAM store in ${path} is damaged: ${how}. It was left as it is. Move it away (or run weft reset --force) to start IPAM afresh on this peer; ` +
      `addresses this peer had handed out are then unknown to it, so detach and re-attach its containers`,
  );
}

/** The store file as a clean stop left it: any later write (or damage) changes its ctime. */
function fingerprint(path: string): string | null {
  try {
    const st = statSync(join(path, 'data.mdb'), { bigint: true });
    return `${st.ino}:${st.size}:${st.ctimeNs}`;
  } catch {
    return null;
  }
}

/**
 * Whether the store must be read in a child before the router opens it: not when the last stop was
 * clean and nothing touched the file since (the check costs a Node process, about 60 ms of a start).
 * The mark is taken away first, so a crash from here on means a check at the next start.
 */
function checkNeeded(path: string): boolean {
  const mark = join(path, CLEAN_STOP);
  let left: string | null = null;
  try {
    left = readFileSync(mark, 'utf8');
    rmSync(mark, { force: true });
  } catch {
    return true;
  }
  return left !== fingerprint(path);
}

/** Written at a clean stop: the store's fingerprint. */
const CLEAN_STOP = 'clean-stop';

/** Where one family's state lives in the store: IPv4's keys are the original ones. */
const KEYS = { 4: { ring: 'ring', owned: 'owned' }, 6: { ring: 'ring6', owned: 'owned6' } } as const;

/**
 * The IPv4 allocator's store; `ipv6()` gives the IPv6 allocator's part of the same database (keys of
 * its own, and its range recorded under meta6). Positions are kept in their wire form (IPv6 as
 * decimal text), so the IPv4 part's format is what it always was.
 */
export class IpamStore implements AllocatorStore<Addr> {
  private readonly db: RootDatabase;
  private closed = false;

  constructor(
    readonly dir: string,
    private readonly range: Cidr,
    private readonly peer: PeerName,
  ) {
    if (checkNeeded(join(dir, 'ipam'))) checkStoreReadable(join(dir, 'ipam'));
    this.db = open({ path: join(dir, 'ipam'), compression: false });
    const meta = this.db.get('meta') as Meta | undefined;
    if (meta) {
      if (meta.format !== FORMAT)
        throw new Error(`the IPAM data in ${join(dir, 'ipam')} has format ${meta.format}; this weft reads ${FORMAT}`);
      if (meta.range !== formatCidr(range)) {
        this.db.close();
        throw new Error(
          `the IPAM data in ${join(dir, 'ipam')} is for --ipalloc-range ${meta.range}, but this router was started with ${formatCidr(range)}. ` +
            `Start it with --ipalloc-range ${meta.range}, or run weft reset (or remove that folder) to start IPAM afresh on this peer`,
        );
      }
      if (meta.peer !== peer) {
        this.db.close();
        throw new Error(
          `the IPAM data in ${join(dir, 'ipam')} belongs to peer ${meta.peer}, not ${peer}; remove that folder (or run weft reset) to start IPAM afresh`,
        );
      }
    } else {
      this.db.putSync('meta', { format: FORMAT, range: formatCidr(range), peer } satisfies Meta);
    }
  }

  load(): { ring: Ring<Addr> | null; owned: Map<string, Addr[]> } {
    return this.loadFamily(IPV4);
  }

  /** Resolves once the write is committed to disk. */
  save(ring: Ring<Addr> | null, owned: Map<string, Addr[]>): Promise<void> {
    return this.saveFamily(IPV4, ring, owned);
  }

  /** The IPv6 allocator's part: refuses, as the IPv4 part does, data made for another range. */
  ipv6(range: CidrOf<Addr6>): AllocatorStore<Addr6> {
    const meta = this.db.get('meta6') as { range: string } | undefined;
    const given = IPV6.formatCidr(range);
    // Data for another range refuses; a range never used (no ring yet) may change freely.
    const used = this.db.get(KEYS[6].ring) !== undefined;
    if (meta && meta.range !== given && used) {
      this.db.close();
      throw new Error(
        `the IPAM data in ${join(this.dir, 'ipam')} is for --ipalloc-range6 ${meta.range}, but this router was started with ${given}. ` +
          `Start it with --ipalloc-range6 ${meta.range}, or run weft reset (or remove that folder) to start IPAM afresh on this peer`,
      );
    }
    if (meta?.range !== given) this.db.putSync('meta6', { range: given });
    return { load: () => this.loadFamily(IPV6), save: (ring, owned) => this.saveFamily(IPV6, ring, owned) };
  }

  private loadFamily<A extends Position>(f: IpFamily<A>): { ring: Ring<A> | null; owned: Map<string, A[]> } {
    const keys = KEYS[f.version];
    const r = this.db.get(keys.ring) as
      { origin: { start: unknown; end: unknown; seeds: PeerName[] }; entries: unknown[] } | undefined;
    let ring: Ring<A> | null = null;
    let owned: Map<string, A[]>;
    try {
      if (r) {
        ring = new Ring({ start: f.fromWire(r.origin.start), end: f.fromWire(r.origin.end), seeds: r.origin.seeds });
        ring.merge(r.entries.map((w) => entryFromWire(w, f)));
      }
      const o = (this.db.get(keys.owned) as Record<string, unknown[]> | undefined) ?? {};
      owned = new Map(Object.entries(o).map(([ident, addrs]) => [ident, addrs.map((x) => f.fromWire(x))]));
    } catch (err) {
      throw new Error(
        `the IPAM ${f.version === 6 ? 'IPv6 ' : ''}state stored in ${join(this.dir, 'ipam')} is corrupt (${(err as Error).message}); run weft reset to start IPAM afresh`,
      );
    }
    return { ring, owned };
  }

  private async saveFamily<A extends Position>(
    f: IpFamily<A>,
    ring: Ring<A> | null,
    owned: Map<string, A[]>,
  ): Promise<void> {
    // A save asked for while the router stops (the store closing) has nothing left to write to.
    if (this.closed) return;
    const keys = KEYS[f.version];
    await this.db.transaction(() => {
      // The transaction's own promise carries any failure; these only repeat it.
      if (ring) {
        const o = ring.origin;
        this.db
          .put(keys.ring, {
            origin: { start: f.toWire(o.start), end: f.toWire(o.end), seeds: o.seeds },
            entries: ring.all().map((e) => entryToWire(e, f)),
          })
          .catch(() => undefined);
      }
      const wire = [...owned].map(([ident, addrs]) => [ident, addrs.map((x) => f.toWire(x))]);
      this.db.put(keys.owned, Object.fromEntries(wire)).catch(() => undefined);
    });
  }

  async clear(): Promise<void> {
    await this.db.transaction(() => {
      for (const k of [...Object.values(KEYS[4]), ...Object.values(KEYS[6])]) void this.db.remove(k);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.db.close();
    const path = join(this.dir, 'ipam');
    const print = fingerprint(path);
    // Not marked, the next start checks the store: the safe side of any failure here.
    if (print)
      try {
        writeFileSync(join(path, CLEAN_STOP), print);
      } catch {
        /* read-only or full: checked next time */
      }
  }
}
