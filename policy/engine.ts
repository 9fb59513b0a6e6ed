// Security groups on one host: the gossiped rule table, the model compiled from
// it and the mesh's endpoints (every container's groups and addresses, from every
// host), and its enforcement here. A change of rules or of which local containers
// are limited rewrites weft's nftables table in one transaction; a change of group
// membership anywhere only adds and deletes set elements. After each change the
// tracked flows that are no longer allowed are cut. The kernel keeps enforcing
// while the router is down; a restarted router rewrites the table from its state.
import { stateFile, type StateDir } from '../lib/json-file.js';
import type { Datapath } from '../datapath/datapath.js';

/**
 * What the policy needs of the datapath: its endpoints (every container's groups and addresses), the
 * port guard's state, and a rewrite of the firewall table (whose policy part it gives through the
 * datapath's FirewallPart hook).
 */
export type PolicyHost = Pick<Datapath, 'endpoints' | 'guard' | 'refreshFirewall' | 'carriesIpv6'>;
import { readFile } from 'node:fs/promises';
import { nft, sysctl } from '../net/command.js';
import { linkLocalOf } from '../net/addr6.js';
import { nftObjects, nftSession } from '../net/nft-session.js';
import { REVOKED_TABLE, TABLE } from '../datapath/firewall.js';
import type { MeshView, TombstoneOptions } from '../mesh/index.js';
import { byTarget, listFlows, markRevoked } from './conntrack.js';
import { PolicyModel, type Decision, type Flow, type Member } from './model.js';
import {
  compilePolicy,
  elementUpdates,
  forgetRevoked,
  NO_PICKUP_COMMENT,
  REVOKED_COMMENT,
  type CompiledPolicy,
} from './nft.js';
import { PolicyTable } from './table.js';
import { SerialJob } from '../lib/serial-job.js';

const BRIDGE_NF = 'net.bridge.bridge-nf-call-iptables';
/** The same for bridged IPv6 (with --ipv6: without it, IPv6 would cross the bridge unjudged). */
const BRIDGE_NF6 = 'net.bridge.bridge-nf-call-ip6tables';
const RETRY_MS = 5000;
const RETRY_MAX_MS = 300_000;
const START_CHECK_MS = 2000;

export interface PolicyStatus {
  rules: number;
  limitedHere: number;
  /** False when some part the policy needs is missing or failed: `notEnforced` says which. */
  enforced: boolean;
  notEnforced: string[];
  lastError: string | null;
  /** Packets each rule let through on this host. */
  allowed: { rule: string; packets: number }[];
  /** Packets dropped on this host, per group (and per container limited by single-container rules). */
  dropped: { group: string; direction: 'ingress' | 'egress'; packets: number }[];
  flowsCut: number;
  /** Packets of flows and connections cut after revocations dropped here since the rules were last written. */
  revokedDropped: number;
  elementUpdates: number;
  rewrites: number;
  /** Wall time spent compiling and applying, in all. */
  applyMs: number;
  /** Removed rules still remembered, until every member of the mesh has them (mesh/tombstones.ts). */
  removals: { kept: number; waitingFor: string[] };
}

export class PolicyEngine {
  readonly table: PolicyTable;
  /** What the kernel has (as far as we know), and what was last handed to the firewall to write. */
  private current: CompiledPolicy | null = null;
  private offered: CompiledPolicy | null = null;
  /** What firewallPart last gave the firewall to write (written() makes it current, not a later compile). */
  private given: CompiledPolicy | null = null;
  private dirty = true;
  private readonly job = new SerialJob(() => this.syncPass(), 10);
  lastError: string | null = null;
  /** Why br_netfilter does not work, when it does not (checked whenever rules limit a container here). */
  private bridgeNf: string | null = null;
  /** Whether the kernel may hold flows marked revoked (an earlier run may have left some). */
  private mayHaveRevoked = true;
  /** The policy the tracked flows were last brought in line with (reconcileFlows). */
  private reconciled: CompiledPolicy | null = null;
  private retry: NodeJS.Timeout | null = null;
  /** How long after a failed pass the next is tried: doubled after each failure in a row, up to 5 minutes. */
  private retryMs = RETRY_MS;
  private startCheck: NodeJS.Timeout | null = null;
  /** The model `offered` was compiled from (the flows are judged by the same). */
  private offeredModel: PolicyModel | null = null;
  readonly stats = { flowsCut: 0, elementUpdates: 0, rewrites: 0, applyMs: 0 };

  constructor(
    private readonly mesh: MeshView,
    private readonly datapath: PolicyHost | null,
    state: StateDir,
    /** When removed rules may be forgotten (from the gossip interval), and the peers known before members were kept. */
    tombstones?: TombstoneOptions,
  ) {
    this.table = new PolicyTable(
      mesh,
      stateFile(state, 'policy.json'),
      stateFile(state, 'policy-members.json'),
      tombstones,
    );
  }

  /** Follows changes of rules and endpoints from now on. */
  start(): void {
    if (!this.datapath) return;
    void this.bridgeNetfilter().then((why) => (this.bridgeNf = why));
    this.dirty = true;
    this.table.onChange(() => this.schedule());
    this.datapath.endpoints.onChange(() => this.schedule());
    // The flows checked against the rules once (a rule removed while the router was down cuts, the
    // marks of flows allowed again are cleared), off the start's path.
    this.startCheck = setTimeout(() => this.schedule(), START_CHECK_MS).unref();
  }

  members(): Member[] {
    const eps = this.datapath?.endpoints.all() ?? [];
    return eps.map((e) => ({
      container: e.container,
      peer: e.peer,
      // A dual-stack container speaks from its link-local address too (its port lets it): rules that
      // limit the container must hold for that address as well, or link-local would pass them by.
      addrs: [
        ...[...e.cidrs, ...(e.cidrs6 ?? [])].map((c) => c.split('/')[0]),
        ...((e.cidrs6 ?? []).length > 0 ? [linkLocalOf(e.mac)] : []),
      ],
      groups: e.groups ?? [],
    }));
  }

  model(): PolicyModel {
    return new PolicyModel(this.table.rules(), this.members());
  }

  private compile(model: PolicyModel): CompiledPolicy {
    return compilePolicy(
      model,
      model.members.filter((m) => m.peer === this.mesh.name),
      { ipv6: this.datapath?.carriesIpv6 ?? false },
    );
  }

  /** The policy compiled from the state now: compiled again only when rules or endpoints changed. */
  private fresh(): CompiledPolicy {
    if (this.dirty || !this.offered) {
      this.offeredModel = this.model();
      this.offered = this.compile(this.offeredModel);
      this.dirty = false;
    }
    return this.offered;
  }

  /** What the firewall table carries for the policy, from the state now (datapath/firewall.ts asks every few seconds). */
  firewallPart(): { lines: string[]; hooks: string[]; revokedTable: string[] } | null {
    const c = this.fresh();
    this.given = c;
    return c.hooks.length > 0 ? { lines: c.lines, hooks: c.hooks, revokedTable: c.revokedTable } : null;
  }

  /**
   * Local containers some rule limits on ingress (the bridge guard keeps broadcast and multicast from
   * them): as in the policy last given to the firewall, whose rewrite reschedules the guard; compiled
   * afresh only before there is one.
   */
  limitedIn(): Set<string> {
    const c = this.given ?? this.fresh();
    return new Set(
      [...c.counters.values()].filter((m) => m.kind === 'deny' && m.direction === 'ingress').map((m) => m.id),
    );
  }

  /** The firewall wrote the table with what firewallPart last gave. */
  written(): void {
    if (this.given) this.current = this.given;
  }

  check(f: Flow): Decision {
    return this.model().decide(f);
  }

  private schedule(): void {
    this.dirty = true;
    this.job.schedule();
  }

  /** Brings the kernel in line with the model; one run at a time, again if something changed meanwhile. */
  sync(): Promise<void> {
    return this.job.run();
  }

  private async syncPass(): Promise<void> {
    if (!this.datapath) return;
    const t0 = performance.now();
    try {
      await this.apply();
      this.lastError = null;
      this.retryMs = RETRY_MS;
    } catch (err) {
      this.lastError = (err as Error).message;
      // A pass that failed (a tool killed at its timeout on a loaded host) is not left for the next
      // change; one that keeps failing (a tool missing) is tried less and less often.
      if (!this.retry) {
        const wait = this.retryMs;
        this.retryMs = Math.min(wait * 2, RETRY_MAX_MS);
        this.mesh.log.warn({ err: this.lastError }, `policy enforcement failed; trying again in ${wait / 1000} s`);
        this.retry = setTimeout(() => {
          this.retry = null;
          this.schedule();
        }, wait).unref();
      }
    }
    this.stats.applyMs += performance.now() - t0;
  }

  /**
   * Bridged IPv4 (and with --ipv6, IPv6) meets the forward hook only through br_netfilter, turned on
   * here; null when it is, else why not.
   */
  private async bridgeNetfilter(): Promise<string | null> {
    const wanted = this.datapath?.carriesIpv6 ? [BRIDGE_NF, BRIDGE_NF6] : [BRIDGE_NF];
    for (const name of wanted) {
      try {
        await sysctl(name, '1');
        const now = (await readFile(`/proc/sys/${name.replaceAll('.', '/')}`, 'utf8')).trim();
        if (now !== '1') throw new Error(`it reads "${now}" after weft set it to 1`);
      } catch (err) {
        return `br_netfilter is not working (${name}: ${(err as Error).message}): bridged traffic never meets the rules; load the br_netfilter module`;
      }
    }
    return null;
  }

  /**
   * What keeps the policy from being enforced here, if anything (empty: enforced). Fails closed in
   * what it says: a part it cannot confirm counts as missing.
   */
  notEnforced(): string[] {
    const out: string[] = [];
    if (!this.datapath) return ['this router has no datapath (--datapath none)'];
    if (this.bridgeNf) out.push(this.bridgeNf);
    if (this.datapath.guard.lastError) out.push(`${this.datapath.guard.lastError}: containers can send as others`);
    if (this.lastError) out.push(`the rules could not be written: ${this.lastError}`);
    return out;
  }

  private async apply(): Promise<void> {
    const next = this.fresh(); // the same compilation a rewrite below writes
    const model = this.offeredModel!; // next's (a firewall check may compile afresh meanwhile)
    const prev = this.current;
    if (next.hooks.length > 0) this.bridgeNf = await this.bridgeNetfilter();
    const differs = !prev || prev.skeleton !== next.skeleton;
    if (differs) {
      await this.datapath!.refreshFirewall();
      this.stats.rewrites++;
    } else {
      const text = elementUpdates(TABLE, prev.sets, next.sets);
      this.current = next;
      if (text) {
        try {
          await nft(['-f', '-'], text);
          this.stats.elementUpdates++;
        } catch {
          await this.datapath!.refreshFirewall(); // the kernel's sets were not what we thought: write them whole
          this.stats.rewrites++;
        }
      }
    }
    await this.reconcileFlows(next, model);
  }

  /**
   * Brings the tracked flows in line with `next`, against what they were last brought in line with
   * (not with what the firewall last wrote: its own rewrites, at start or after a repair, cut nothing).
   * Only a change that can take a permission away needs the flows checked, joins alone cannot; and
   * only one that can give one back needs the revoked flows checked.
   */
  private async reconcileFlows(next: CompiledPolicy, model: PolicyModel): Promise<void> {
    const base = this.reconciled;
    const lost = (from: Map<string, string[]>, to: Map<string, string[]>) =>
      [...from].some(([name, addrs]) => {
        const now = new Set(to.get(name) ?? []);
        return addrs.some((a) => !now.has(a));
      });
    if (next.hooks.length > 0 || (base !== null && base.hooks.length > 0)) {
      const differs = !base || base.skeleton !== next.skeleton;
      if (differs || lost(base.sets, next.sets)) await this.cutRevoked(model);
      if (this.mayHaveRevoked && (differs || lost(next.sets, base.sets)))
        await this.restoreAllowed(model, next.hooks.length > 0);
    }
    this.reconciled = next;
  }

  private families(): ('ipv4' | 'ipv6')[] {
    return this.datapath?.carriesIpv6 ? ['ipv4', 'ipv6'] : ['ipv4'];
  }

  /**
   * Whether this host's rules deny a flow: the limits of a local container at either end. (A limit of
   * a container on another host is that host's to enforce, and to cut.)
   */
  private deniedHere(model: PolicyModel, local: Set<string>, f: Flow): boolean {
    const d = model.decide(f);
    return (d.egress.kind === 'denied' && local.has(f.src)) || (d.ingress.kind === 'denied' && local.has(f.dst));
  }

  private localAddrs(model: PolicyModel): Set<string> {
    return new Set(model.members.filter((m) => m.peer === this.mesh.name).flatMap((m) => m.addrs));
  }

  /** Marks revoked the tracked flows that this host's rules no longer allow. */
  private async cutRevoked(model: PolicyModel): Promise<void> {
    const local = this.localAddrs(model);
    const denied = byTarget(
      await listFlows((f) => this.deniedHere(model, local, f), undefined, this.families(), false),
    );
    if (denied.length > 0) this.mayHaveRevoked = true;
    for (const f of denied) await markRevoked(f, true);
    this.stats.flowsCut += denied.length;
  }

  /** Clears the mark of local containers' revoked flows that this host's rules allow again (a rule came back). */
  private async restoreAllowed(model: PolicyModel, rememberedHere: boolean): Promise<void> {
    const local = this.localAddrs(model);
    let stillDenied = false;
    const keep = (f: Flow) => {
      // Another firewall's, or a container's that has gone (kept in mind: its address may come back).
      if (!local.has(f.src) && !local.has(f.dst)) {
        stillDenied = true;
        return false;
      }
      const denied = this.deniedHere(model, local, f);
      stillDenied ||= denied;
      return !denied;
    };
    const allowed = await listFlows(keep, undefined, this.families(), true);
    const connections: { src: string; dst: string; sport: number; port: number }[] = [];
    for (const f of allowed)
      if (f.proto === 'tcp' && f.sport !== undefined && f.port !== undefined)
        connections.push({ src: f.src, dst: f.dst, sport: f.sport, port: f.port });
    for (const f of byTarget(allowed)) await markRevoked(f, false);
    // Nor are they kept from being picked up again (policy/nft.ts): the policy allows them now. (With
    // no policy here, table weft_revoked and what it remembered are gone.)
    const forget = forgetRevoked(connections);
    if (forget && rememberedHere) await nft(['-f', '-'], forget);
    this.mayHaveRevoked = stillDenied;
  }

  /** For the status summary, without asking the kernel. */
  summary(): { rules: number; limitedHere: number; lastError: string | null; notEnforced: string[] } {
    const limited = new Set(
      [...(this.current?.counters.values() ?? [])].filter((m) => m.kind === 'deny').map((m) => m.id),
    );
    return {
      rules: this.table.rules().length,
      limitedHere: limited.size,
      lastError: this.lastError,
      notEnforced: this.notEnforced(),
    };
  }

  /** Whether some rule limits members of these groups (attach warns when such a container joins an unenforced policy). */
  limits(groups: string[]): boolean {
    return this.table.rules().some((r) => r.target.kind === 'group' && groups.includes(r.target.name));
  }

  /** Counters of the policy's rules in the kernel. */
  async status(): Promise<PolicyStatus> {
    const allowed = new Map<string, number>();
    const dropped = new Map<string, { group: string; direction: 'ingress' | 'egress'; packets: number }>();
    const meaning = this.current?.counters ?? new Map();
    let revokedDropped = 0;
    if (this.current && this.current.hooks.length > 0) {
      try {
        // -t: the rules and their counters, without the sets' elements.
        const listings = [
          await nftSession.list(`list table inet ${TABLE}`),
          await nftSession.list(`list table inet ${REVOKED_TABLE}`),
        ];
        for (const rule of listings.flatMap((listing) =>
          nftObjects<{ comment?: string; expr?: { counter?: { packets: number } }[] }>(listing, 'rule'),
        )) {
          const packets = rule.expr?.find((e) => e.counter)?.counter?.packets ?? 0;
          if (rule.comment === REVOKED_COMMENT || rule.comment === NO_PICKUP_COMMENT) revokedDropped += packets;
          const m = rule.comment ? meaning.get(rule.comment) : undefined;
          if (!m) continue;
          if (m.kind === 'rule') allowed.set(m.id, (allowed.get(m.id) ?? 0) + packets);
          else
            for (const g of m.groups.length > 0 ? m.groups : [`container:${m.id}`]) {
              const k = `${m.direction} ${g}`;
              const cur = dropped.get(k) ?? { group: g, direction: m.direction, packets: 0 };
              cur.packets += packets;
              dropped.set(k, cur);
            }
        }
      } catch (err) {
        this.lastError = `reading the policy counters: ${(err as Error).message}`;
      }
    }
    const rules = this.table.rules();
    const notEnforced = this.notEnforced();
    const gc = this.table.tombstoneStatus();
    return {
      rules: rules.length,
      limitedHere: this.summary().limitedHere,
      enforced: notEnforced.length === 0,
      notEnforced,
      lastError: this.lastError,
      allowed: rules.map((r) => ({ rule: r.id, packets: allowed.get(r.id) ?? 0 })),
      dropped: [...dropped.values()].sort((a, b) => (a.group < b.group ? -1 : 1)),
      revokedDropped,
      ...this.stats,
      removals: {
        kept: gc.tombstones,
        waitingFor: gc.waitingFor.map((p) => {
          const nick = this.mesh.nicknameOf(p);
          return nick ? `${p}(${nick})` : p;
        }),
      },
    };
  }

  stop(): void {
    if (this.retry) clearTimeout(this.retry);
    if (this.startCheck) clearTimeout(this.startCheck);
    this.job.stop();
    this.table.stop();
  }
}
