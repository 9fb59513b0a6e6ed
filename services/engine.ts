// Services on one host: the gossiped service table, each service's backends
// (the live members of its group, or its named containers, anywhere in the mesh:
// on a reachable peer and not failing a check), and the translation in every
// local container's namespace (services/nft.ts), rewritten when any of that
// changes. Backends that drop out lose their flows from this host's clients
// (conntrack) so nothing keeps talking to a dead one. This host also probes its
// own backends of services with a check, and announces those that fail.
import { connect } from 'node:net';
import { stateFile, type StateDir } from '../lib/json-file.js';
import type { Datapath } from '../datapath/datapath.js';
import { containerNamespace } from '../datapath/attach.js';
import { CommandError, conntrack, ip, nft } from '../net/command.js';
import { formatCidr, overlaps, type Cidr } from '../net/addr.js';
import type { MeshView, PeerName, TombstoneOptions } from '../mesh/index.js';
import { SerialJob } from '../lib/serial-job.js';
import { containerMatches } from '../policy/model.js';
import { SERVICES_TABLE, compileServiceTable, type ServedVip } from './nft.js';
import { ServiceError, checkService, pickVip, resolveVips, vip6Of, type Affinity, type Service } from './service.js';
import { formatCidr6, overlaps6, type Cidr6 } from '../net/addr6.js';
import { HealthRecords, ServiceTable, type Failing } from './table.js';
import { every, type Tick } from '../lib/ticker.js';

type Health = 'healthy' | 'failing' | 'unchecked';

interface BackendView {
  container: string;
  peer: PeerName;
  /** Its IPv4 address (none: an IPv6-only container). */
  addr?: string;
  /** Its IPv6 address (a dual-stack or IPv6-only container, --ipv6). */
  addr6?: string;
  /** Its check's result: on its IPv4 address, or on its IPv6 one when it has only that. */
  health: Health;
  /** The check's result on its IPv6 address (checked apart: a server may listen on one family only). */
  health6?: Health;
}

export interface ServiceView extends Service {
  /** With --ipv6: the IPv6 VIP (at the IPv4 VIP's offset in --service-range6). */
  vip6?: string;
  /** False when another service kept this VIP (picked on both sides of a partition); a new one is on its way. */
  served: boolean;
  conflict?: string;
  /** The backends now: live containers of the group (or the named ones) on reachable peers. */
  live: BackendView[];
}

export interface ServiceRequest {
  name: string;
  group?: string;
  backends?: string[];
  affinity?: Affinity;
  check?: { proto: 'tcp'; port: number };
}

/** Probes: every second; a backend is out after two failed probes in a row, back after one good one. */
const PROBE_MS = 1000;
const PROBE_TIMEOUT_MS = 800;
const FALL = 2;
/** How old the flow counts a scrape sees may be. */
const FLOWS_MAX_AGE_MS = 15_000;

export class ServiceEngine {
  readonly table: ServiceTable;
  /** Backends failing their check over IPv4 (or over IPv6, having only that), and over IPv6. */
  readonly health: HealthRecords;
  readonly health6: HealthRecords;
  readonly rangeText: string;
  /** --service-range6, with --ipv6. */
  readonly range6Text: string | null;
  /** The DNS domain without its final dot. */
  private readonly zone: string;
  /** Local containers whose namespace has the current table: container -> (namespace, text written). */
  private readonly programmed = new Map<string, { netns: string; text: string; dual: boolean }>();
  /** The backends each VIP had at the last pass (their flows are cut when they drop out). */
  private lastBackends = new Map<string, Set<string>>();
  private readonly failures = new Map<string, number>();
  /** The address families each service's backends have, for DNS: worked out once per change. */
  private families: Map<string, { v4: boolean; v6: boolean }> | null = null;
  private readonly job = new SerialJob(() => this.syncPass(), 10);
  private probeTimer: Tick | null = null;
  lastError: string | null = null;
  readonly stats = { rewrites: 0, flowsCut: 0, vipsRepicked: 0, probes: 0 };
  private flowCount: { at: number; counts: Map<string, Map<string, number>> } | null = null;
  private flowsReading: Promise<void> | null = null;

  constructor(
    private readonly mesh: MeshView,
    private readonly datapath: Datapath | null,
    readonly range: Cidr,
    state: StateDir,
    /** The DNS domain ("weft.local."): NAME.DOMAIN answers with the VIP. */
    domain: string,
    /** With --ipv6: where the IPv6 VIPs are. */
    readonly range6: Cidr6 | null = null,
    /** When removed services may be forgotten (from the gossip interval), and the peers known before members were kept. */
    tombstones?: TombstoneOptions,
  ) {
    this.rangeText = formatCidr(range);
    this.range6Text = range6 ? formatCidr6(range6) : null;
    this.zone = domain.replace(/\.$/, '');
    this.table = new ServiceTable(
      mesh,
      range,
      stateFile(state, 'services.json'),
      stateFile(state, 'services-members.json'),
      tombstones,
    );
    this.health = new HealthRecords(mesh);
    this.health6 = new HealthRecords(mesh, true);
    this.table.onChange(() => (this.resolved = null));
  }

  private resolved:
    (ReturnType<typeof resolveVips> & { byName: Map<string, Service>; byVip: Map<string, Service> }) | null = null;

  /**
   * Which services serve their VIP and which lost it: worked out once per change of the table (DNS
   * asks per query, the views every probe and sync).
   */
  private resolve(): NonNullable<ServiceEngine['resolved']> {
    if (!this.resolved) {
      const r = resolveVips(this.table.values());
      this.resolved = {
        ...r,
        byName: new Map(r.served.map((s) => [s.name, s])),
        byVip: new Map(r.served.flatMap((s) => [[s.vip, s], ...(this.range6 ? [[this.vip6(s.vip), s] as const] : [])])),
      };
    }
    return this.resolved;
  }

  /** NAME.DOMAIN, without the final dot. */
  dnsName(name: string): string {
    return `${name}.${this.zone}`;
  }

  /** The service range must not overlap the allocation range (checked at start); nor the IPv6 ones. */
  static checkRanges(serviceRange: Cidr, allocRange: Cidr, v6?: { service: Cidr6; alloc: Cidr6 }): void {
    if (overlaps(serviceRange, allocRange))
      throw new ServiceError(
        `--service-range ${formatCidr(serviceRange)} overlaps the allocation range ${formatCidr(allocRange)}: choose ranges apart`,
      );
    if (v6 && overlaps6(v6.service, v6.alloc))
      throw new ServiceError(
        `--service-range6 ${formatCidr6(v6.service)} overlaps --ipalloc-range6 ${formatCidr6(v6.alloc)}: choose ranges apart`,
      );
  }

  /** A VIP's IPv6 twin (with --ipv6). */
  private vip6(vip: string): string {
    return vip6Of(vip, this.range, this.range6!);
  }

  start(): void {
    const schedule = () => {
      this.families = null;
      this.job.schedule();
    };
    this.table.onChange(schedule);
    this.health.onChange(schedule);
    this.health6.onChange(schedule);
    this.datapath?.endpoints.onChange(schedule);
    this.mesh.on('topology', schedule);
    this.job.schedule();
    if (this.datapath) {
      this.probeTimer = every(PROBE_MS, () =>
        this.probe().catch((err: Error) => (this.lastError = `probing backends: ${err.message}`)),
      );
    }
  }

  stop(): void {
    this.job.stop();
    this.table.stop();
    this.health.stop();
    this.health6.stop();
    this.probeTimer?.stop();
  }

  // ---- the model

  private reachable(): Set<PeerName> {
    return new Set([this.mesh.name, ...this.mesh.dataRoutes().keys()]);
  }

  /** Every service with its backends as this host sees them. */
  views(): ServiceView[] {
    const { served, conflicts } = this.resolve();
    const six = this.range6 !== null;
    const endpoints = (this.datapath?.endpoints.all() ?? []).filter(
      (e) => e.cidrs.length > 0 || (six && (e.cidrs6 ?? []).length > 0),
    );
    const reachable = this.reachable();
    // A backend's health is its own host's word only: another peer's record naming it counts for nothing.
    const key = (peer: PeerName, service: string, container: string) => `${peer} ${service} ${container}`;
    const failing = new Set(this.health.all().map((f) => key(f.peer, f.service, f.container)));
    const failing6 = new Set(this.health6.all().map((f) => key(f.peer, f.service, f.container)));
    const view = (s: Service, isServed: boolean, conflict?: string): ServiceView => {
      const members = endpoints.filter(
        (e) =>
          reachable.has(e.peer) &&
          (s.group !== undefined
            ? (e.groups ?? []).includes(s.group)
            : s.backends!.some((b) => containerMatches(b, e.container))),
      );
      const healthIn = (set: Set<string>, e: { peer: PeerName; container: string }): Health =>
        s.check ? (set.has(key(e.peer, s.name, e.container)) ? 'failing' : 'healthy') : 'unchecked';
      const live = members
        .map((e): BackendView => {
          const addr = e.cidrs[0]?.split('/')[0];
          const addr6 = six ? e.cidrs6?.[0]?.split('/')[0] : undefined;
          const health6 = addr6 !== undefined ? healthIn(failing6, e) : undefined;
          return {
            container: e.container,
            peer: e.peer,
            ...(addr !== undefined ? { addr } : {}),
            ...(addr6 !== undefined ? { addr6 } : {}),
            health: addr !== undefined ? healthIn(failing, e) : health6!,
            ...(health6 !== undefined ? { health6 } : {}),
          };
        })
        .sort((a, b) => {
          const x = a.addr ?? `~${a.addr6}`; // IPv4 first, then IPv6-only backends
          const y = b.addr ?? `~${b.addr6}`;
          return x < y ? -1 : x > y ? 1 : 0;
        });
      return {
        ...s,
        ...(this.range6 ? { vip6: this.vip6(s.vip) } : {}),
        served: isServed,
        ...(conflict ? { conflict } : {}),
        live,
      };
    };
    return [
      ...served.map((s) => view(s, true)),
      ...conflicts.map((c) =>
        view(c.service, false, `VIP ${c.service.vip} is kept by service ${c.takenBy}; a new VIP is being picked`),
      ),
    ].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /**
   * The VIPs for a DNS name (NAME.DOMAIN), or null. With --ipv6, a VIP of each family some backend
   * passes its check on: a service of IPv4-only containers (or of servers that listen on IPv4 only)
   * has no AAAA, since a client that prefers IPv6 would be refused there; one of IPv6-only
   * containers no A. With no backend up in either family, the families they have; with none, both.
   */
  vipFor(hostname: string): { v4?: string; v6?: string } | null {
    const suffix = `.${this.zone}.`;
    const n = hostname.endsWith('.') ? hostname : `${hostname}.`;
    if (!n.endsWith(suffix)) return null;
    const name = n.slice(0, -suffix.length);
    const vip = this.resolve().byName.get(name)?.vip;
    if (vip === undefined) return null;
    if (!this.range6) return { v4: vip };
    this.families ??= new Map(
      this.views().map((v) => {
        const up = {
          v4: v.live.some((b) => b.addr && b.health !== 'failing'),
          v6: v.live.some((b) => b.addr6 && b.health6 !== 'failing'),
        };
        const have = { v4: v.live.some((b) => b.addr), v6: v.live.some((b) => b.addr6) };
        return [v.name, up.v4 || up.v6 ? up : have];
      }),
    );
    const f = this.families.get(name);
    const none = !f || (!f.v4 && !f.v6);
    return { ...(none || f.v4 ? { v4: vip } : {}), ...(none || f.v6 ? { v6: this.vip6(vip) } : {}) };
  }

  /** The service that has this VIP, if any (DNS reverse lookups). */
  nameOf(vip: string): string | null {
    const s = this.resolve().byVip.get(vip);
    return s ? `${this.dnsName(s.name)}.` : null;
  }

  // ---- changes

  create(req: ServiceRequest): Service {
    if (this.table.get(req.name))
      throw new ServiceError(
        `service ${req.name} exists (weft service show ${req.name}); remove it first to change it`,
        'conflict',
      );
    const taken = new Set(this.table.values().map((s) => s.vip));
    const draft = {
      name: req.name,
      vip: pickVip(this.range, taken, req.name),
      ...(req.group !== undefined ? { group: req.group } : { backends: req.backends }),
      affinity: req.affinity ?? 'none',
      ...(req.check ? { check: req.check } : {}),
      created: Date.now(),
    };
    const s = checkService(draft, undefined, this.range);
    this.table.put(s.name, s);
    return s;
  }

  remove(name: string): Service | null {
    const s = this.table.get(name);
    return s && this.table.remove(name) ? s : null;
  }

  /**
   * A service that lost its VIP gets a new one, picked by its creator, or by the first peer in name
   * order when the creator is gone; every peer that picks with the same view picks the same address.
   */
  private repickConflicts(): void {
    const { conflicts } = this.resolve();
    if (conflicts.length === 0) return;
    const all = this.table.all();
    const reachable = [...this.reachable()].sort();
    const taken = new Set(this.table.values().map((s) => s.vip));
    for (const { service } of conflicts) {
      const origin = all.find((e) => e.id === service.name)?.origin;
      const picker = origin && reachable.includes(origin) ? origin : reachable[0];
      if (picker !== this.mesh.name) continue;
      const vip = pickVip(this.range, taken, `${service.name}:${service.created}:${service.vip}`);
      taken.add(vip);
      this.table.put(service.name, { ...service, vip });
      this.stats.vipsRepicked++;
      this.mesh.log.warn(
        { service: service.name, was: service.vip, vip },
        'service lost its VIP to an older one picked while the mesh was apart; picked another',
      );
    }
  }

  // ---- programming this host's containers

  private async syncPass(): Promise<void> {
    try {
      this.repickConflicts(); // a control-plane-only router resolves VIP conflicts too
      if (!this.datapath) return;
      const views = this.views().filter((v) => v.served);
      const vips: ServedVip[] = views.map((v) => {
        return {
          name: v.name,
          vip: v.vip,
          affinity: v.affinity,
          backends: v.live.flatMap((b) => (b.addr !== undefined && b.health !== 'failing' ? [b.addr] : [])),
          ...(v.vip6 !== undefined
            ? {
                vip6: v.vip6,
                backends6: v.live.flatMap((b) => (b.addr6 !== undefined && b.health6 !== 'failing' ? [b.addr6] : [])),
              }
            : {}),
        };
      });
      // Dual-stack containers translate the IPv6 VIPs too.
      const text4 = compileServiceTable(this.rangeText, vips);
      const text6 = this.range6Text ? compileServiceTable(this.rangeText, vips, this.range6Text) : text4;
      const errors: string[] = [];
      const clients = new Map<string, { netns: string; ifname: string; dual: boolean }>();
      for (const e of this.datapath.endpoints.local) {
        const c = containerNamespace(e);
        if (c) clients.set(e.container, { ...c, dual: (e.cidrs6 ?? []).length > 0 });
      }
      for (const [container, c] of clients) {
        const had = this.programmed.get(container);
        const text = c.dual ? text6 : text4;
        if (had?.text === text && had.netns === c.netns) continue;
        try {
          if (!had || had.netns !== c.netns || had.dual !== c.dual) {
            await ip(['route', 'replace', this.rangeText, 'dev', c.ifname], c.netns);
            if (c.dual && this.range6Text)
              await ip(['-6', 'route', 'replace', this.range6Text, 'dev', c.ifname], c.netns);
          }
          await nft(['-f', '-'], text, c.netns);
          this.programmed.set(container, { netns: c.netns, text, dual: c.dual });
          this.stats.rewrites++;
        } catch (err) {
          this.programmed.delete(container);
          errors.push(`${container}: ${(err as Error).message}`);
        }
      }
      // Containers detached here whose namespace lives on: their translation goes with the attachment.
      for (const [container, had] of this.programmed) {
        if (clients.has(container)) continue;
        this.programmed.delete(container);
        for (const family of ['ip', 'ip6'])
          await nft(['delete', 'table', family, SERVICES_TABLE], undefined, had.netns).catch(() => undefined);
      }
      await this.cutGoneBackends(
        vips,
        [...clients.values()].map((c) => c.netns),
      );
      this.lastError = errors.length > 0 ? `translation not written for ${errors.join('; ')}` : null;
      if (errors.length > 0) this.mesh.log.warn({ err: this.lastError }, 'service translation failed');
    } catch (err) {
      this.lastError = (err as Error).message;
      this.mesh.log.warn({ err: this.lastError }, 'service sync failed');
    }
  }

  /** Flows of this host's clients to backends that dropped out of a VIP (or to VIPs gone) are cut. */
  private async cutGoneBackends(vips: ServedVip[], namespaces: string[]): Promise<void> {
    const now = new Map(
      vips.flatMap((v) => [
        [v.vip, new Set(v.backends)] as const,
        ...(v.vip6 !== undefined ? [[v.vip6, new Set(v.backends6 ?? [])] as const] : []),
      ]),
    );
    const cuts: string[][] = [];
    for (const [vip, before] of this.lastBackends) {
      const after = now.get(vip);
      if (!after) cuts.push(['--orig-dst', vip]);
      else for (const b of before) if (!after.has(b)) cuts.push(['--orig-dst', vip, '--reply-src', b]);
    }
    this.lastBackends = now;
    for (const args of cuts)
      for (const ns of namespaces) {
        // No flow to delete makes conntrack exit 1 ("0 flow entries"): a count of 0.
        const family = args[1].includes(':') ? 'ipv6' : 'ipv4';
        const r = await conntrack(['-D', '-f', family, ...args], ns).catch((err: unknown) =>
          err instanceof CommandError ? { stderr: err.stderr } : null,
        );
        const n = Number(/(\d+) flow entries have been deleted/.exec(r?.stderr ?? '')?.[1] ?? 0);
        this.stats.flowsCut += n;
      }
  }

  // ---- health checks of this host's backends

  private async probe(): Promise<void> {
    // The host reaches its own containers through the DNS address's routes back (datapath); without them, nothing is probed.
    if (!this.datapath?.config.dns) return;
    // Nothing checked and nothing failing from before: nothing below would change. This runs every
    // second and most hosts have no service with a check; the views are not worth making to find that.
    const idle = () => this.failures.size === 0 && !this.health.local.length && !this.health6.local.length;
    if (idle() && !this.table.values().some((s) => s.check)) return;
    const local = new Set(this.datapath.endpoints.local.map((e) => e.container));
    // Each address a backend has is checked (a server may listen on one family only); an IPv6-only
    // backend's check is its `health` and its `health6` alike.
    const checks: { key: string; failing: Failing; addr: string; port: number; six: boolean }[] = [];
    for (const v of this.views()) {
      if (!v.check) continue;
      for (const b of v.live) {
        if (!local.has(b.container)) continue;
        const failing = { service: v.name, container: b.container };
        for (const [addr, six] of [
          [b.addr, false],
          [b.addr6, true],
        ] as const)
          if (addr !== undefined)
            checks.push({ key: `${v.name} ${b.container} ${six ? 6 : 4}`, failing, addr, port: v.check.port, six });
      }
    }
    // Checks, but none of them for a local backend: the same.
    if (checks.length === 0 && idle()) return;
    const results = await Promise.all(checks.map(async (c) => ({ c, ok: await tcpProbe(c.addr, c.port) })));
    this.stats.probes += results.length;
    const keys = new Set(checks.map((c) => c.key));
    for (const k of this.failures.keys()) if (!keys.has(k)) this.failures.delete(k);
    for (const { c, ok } of results) this.failures.set(c.key, ok ? 0 : (this.failures.get(c.key) ?? 0) + 1);
    const failingOver = (six: boolean) =>
      results.filter(({ c }) => c.six === six && (this.failures.get(c.key) ?? 0) >= FALL).map(({ c }) => c.failing);
    const key = (l: Failing[]) =>
      l
        .map((f) => `${f.service} ${f.container}`)
        .sort()
        .join('\n');
    for (const [records, failing, family] of [
      [this.health, failingOver(false), 'IPv4'],
      [this.health6, failingOver(true), 'IPv6'],
    ] as const)
      if (key(failing) !== key(records.local)) {
        records.setLocal(failing);
        this.mesh.log.info(
          { family, failing: failing.map((f) => `${f.service}/${f.container}`) },
          'service backends failing their checks changed',
        );
      }
  }

  // ---- flows, for status

  /** Flows of this host's clients per VIP and backend address. */
  /**
   * Tracked flows of this host's containers to each VIP, by backend: read from each container's
   * conntrack table at most every FLOWS_MAX_AGE_MS, in the background; a scrape gets the last count
   * (a busy scraper must not spawn a process per container per scrape).
   */
  async flows(): Promise<Map<string, Map<string, number>>> {
    if (!this.flowCount || Date.now() - this.flowCount.at > FLOWS_MAX_AGE_MS) {
      this.flowsReading ??= this.countFlows()
        .then((counts) => {
          this.flowCount = { at: Date.now(), counts };
        })
        .catch(() => undefined)
        .finally(() => (this.flowsReading = null));
      if (!this.flowCount) await this.flowsReading; // the first scrape waits for a first count
    }
    return this.flowCount?.counts ?? new Map();
  }

  private async countFlows(): Promise<Map<string, Map<string, number>>> {
    const out = new Map<string, Map<string, number>>();
    const vips = new Set(this.table.values().flatMap((s) => [s.vip, ...(this.range6 ? [this.vip6(s.vip)] : [])]));
    const families = this.range6 ? ['ipv4', 'ipv6'] : ['ipv4'];
    for (const { netns } of this.programmed.values()) {
      const lines: string[] = [];
      for (const f of families) {
        const r = await conntrack(['-L', '-f', f], netns).catch(() => null);
        lines.push(...(r?.stdout.split('\n') ?? []));
      }
      for (const line of lines) {
        const srcs = [...line.matchAll(/\bsrc=(\S+)/g)].map((m) => m[1]);
        const dst = /\bdst=(\S+)/.exec(line)?.[1];
        if (!dst || !vips.has(dst) || srcs.length < 2) continue;
        let m = out.get(dst);
        if (!m) out.set(dst, (m = new Map()));
        m.set(srcs[1], (m.get(srcs[1]) ?? 0) + 1);
      }
    }
    return out;
  }

  summary(): {
    services: number;
    served: number;
    containersProgrammed: number;
    lastError: string | null;
  } & ServiceEngine['stats'] {
    const views = this.views();
    const served = views.filter((v) => v.served).length;
    // With no service served, containers get no table (services/nft.ts): none translates.
    return {
      services: views.length,
      served,
      containersProgrammed: served > 0 ? this.programmed.size : 0,
      lastError: this.lastError,
      ...this.stats,
    };
  }
}

function tcpProbe(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port, timeout: PROBE_TIMEOUT_MS });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => done(true));
    s.once('timeout', () => done(false));
    s.once('error', () => done(false));
  });
}
