// The router's Prometheus metrics, computed from its own state at each scrape (nothing is counted
// twice, and nothing can drift from what status shows). Loaded at the first scrape (metrics.ts).
import { Counter, Gauge, Registry } from 'prom-client';
import type { Report } from './contract.js';
import type { Router } from './router.js';
import { hostOf } from '../net/host-port.js';

/** A short, fixed label for why a connection is not on fastdp (the full text is in status). */
function fallbackCategory(reason: string | undefined): string {
  if (!reason) return 'unknown';
  // A peer over IPv6 that fastdp here cannot reach (an IPv4 --host, OVS, no sleeve for IPv6), or at an
  // underlay address no datapath can use (link-local).
  if (/over IPv6|IPv4 only|underlay address/.test(reason)) return 'ipv6_underlay';
  if (/--no-fastdp/.test(reason)) return 'fastdp_off';
  if (/encrypt/.test(reason)) return 'encrypted';
  if (/no underlay address/.test(reason)) return 'no_address';
  if (/heartbeat/.test(reason)) return 'vxlan_unacknowledged';
  return 'other';
}

/** A service backend's health, as the gauges of each family label it. */
const BACKEND_HEALTHS = ['healthy', 'failing', 'unchecked'] as const;

export function buildRegistry(router: Router): Registry {
  const registry = new Registry();
  // One report per scrape, shared by every metric's collect().
  let cached: { at: number; report: Report } | null = null;
  const report = (): Report => {
    if (!cached || Date.now() - cached.at > 100) cached = { at: Date.now(), report: router.report() };
    return cached.report;
  };
  const reg = { registers: [registry] };

  new Gauge({
    name: 'weft_connections',
    help: 'Connections and connection attempts, by state and overlay (fastdp, ovs, sleeve, none; "" before established)',
    labelNames: ['state', 'overlay'],
    ...reg,
    collect() {
      this.reset();
      for (const c of report().connections) this.inc({ state: c.state, overlay: c.overlay ?? '' });
    },
  });
  new Gauge({
    name: 'weft_connections_underlay',
    help: 'Established connections by the family of the underlay they run over (ipv4, ipv6) and overlay',
    labelNames: ['family', 'overlay'],
    ...reg,
    collect() {
      this.reset();
      for (const c of report().connections)
        if (c.state === 'established')
          this.inc({ family: hostOf(c.address).includes(':') ? 'ipv6' : 'ipv4', overlay: c.overlay ?? '' });
    },
  });
  new Gauge({
    name: 'weft_container_addresses',
    help: "This host's containers' overlay addresses, by family",
    labelNames: ['family'],
    ...reg,
    collect() {
      const local = report().datapath?.localEndpoints ?? [];
      this.set(
        { family: 'ipv4' },
        local.reduce((t, e) => t + e.cidrs.length, 0),
      );
      this.set(
        { family: 'ipv6' },
        local.reduce((t, e) => t + (e.cidrs6 ?? []).length, 0),
      );
    },
  });
  new Gauge({
    name: 'weft_connection_fallbacks',
    help: 'Established connections not on fastdp, by reason',
    labelNames: ['reason', 'overlay'],
    ...reg,
    collect() {
      this.reset();
      for (const c of report().connections)
        if (c.state === 'established' && c.overlay && c.overlay !== 'fastdp' && c.overlay !== 'ovs')
          this.inc({ reason: fallbackCategory(c.fallbackReason), overlay: c.overlay });
    },
  });
  // Security groups: the kernel's counters, read once per scrape (async collect).
  let policyStatus: Promise<Awaited<ReturnType<Router['policy']['status']>>> | null = null;
  const policy = () =>
    (policyStatus ??= router.policy.status().finally(() => setTimeout(() => (policyStatus = null), 100)));
  new Gauge({
    name: 'weft_policy_rules',
    help: 'Security group rules in force in the mesh',
    ...reg,
    collect() {
      this.set(router.policy.summary().rules);
    },
  });
  new Gauge({
    name: 'weft_policy_enforced',
    help: '1 when this host enforces the security groups, 0 when something they need is missing or failed (weft status policy says what)',
    ...reg,
    collect() {
      this.set(router.policy.notEnforced().length === 0 ? 1 : 0);
    },
  });
  new Gauge({
    name: 'weft_state_write_failures',
    help: 'State files whose last write failed (a full disk): their changes are in force but not saved',
    ...reg,
    collect() {
      this.set(router.writes.problems().length);
    },
  });
  new Counter({
    name: 'weft_policy_dropped_packets_total',
    help: 'Packets dropped on this host by security groups, by group and direction',
    labelNames: ['group', 'direction'],
    ...reg,
    async collect() {
      this.reset();
      for (const d of (await policy()).dropped) this.inc({ group: d.group, direction: d.direction }, d.packets);
    },
  });
  new Counter({
    name: 'weft_policy_revoked_dropped_packets_total',
    help: 'Packets of flows and connections cut after revocations dropped on this host',
    ...reg,
    async collect() {
      this.reset();
      this.inc((await policy()).revokedDropped);
    },
  });
  new Counter({
    name: 'weft_policy_allowed_packets_total',
    help: 'Packets of new flows let through on this host, by rule id',
    labelNames: ['rule'],
    ...reg,
    async collect() {
      this.reset();
      for (const a of (await policy()).allowed) this.inc({ rule: a.rule }, a.packets);
    },
  });
  // Services: backends per service and health; this host's clients' flows per backend (conntrack, once per scrape).
  new Gauge({
    name: 'weft_service_backends',
    help: 'Live backends of each service, by health (healthy, failing, unchecked)',
    labelNames: ['service', 'health'],
    ...reg,
    collect() {
      this.reset();
      for (const v of router.services.views()) {
        for (const h of BACKEND_HEALTHS)
          this.set({ service: v.name, health: h }, v.live.filter((b) => b.health === h).length);
      }
    },
  });
  new Gauge({
    name: 'weft_service_backends_ipv6',
    help: 'Live backends of each service that have an IPv6 address, by the health of their IPv6 check (--ipv6)',
    labelNames: ['service', 'health'],
    ...reg,
    collect() {
      this.reset();
      for (const v of router.services.views()) {
        if (v.vip6 === undefined) continue;
        for (const h of BACKEND_HEALTHS)
          this.set(
            { service: v.name, health: h },
            v.live.filter((b) => b.addr6 !== undefined && b.health6 === h).length,
          );
      }
    },
  });
  new Gauge({
    name: 'weft_service_flows',
    help: "Tracked flows of this host's containers to each service, by backend address",
    labelNames: ['service', 'backend'],
    ...reg,
    async collect() {
      this.reset();
      const flows = await router.services.flows();
      for (const v of router.services.views())
        for (const [backend, n] of flows.get(v.vip) ?? []) this.set({ service: v.name, backend }, n);
    },
  });
  new Gauge({
    name: 'weft_peers',
    help: 'Peers in the topology, this one included',
    ...reg,
    collect() {
      this.set(report().peers.length);
    },
  });
  const channelCounter = (
    name: string,
    help: string,
    pick: (
      s: { messagesSent: number; bytesSent: number; messagesReceived: number; bytesReceived: number },
      dir: 'sent' | 'received',
    ) => number,
  ) =>
    new Counter({
      name,
      help,
      labelNames: ['channel', 'direction'],
      ...reg,
      collect() {
        this.reset();
        for (const [channel, s] of router.mesh.channelStats) {
          for (const direction of ['sent', 'received'] as const) this.inc({ channel, direction }, pick(s, direction));
        }
      },
    });
  channelCounter('weft_gossip_messages_total', 'Mesh messages, by channel and direction', (s, d) =>
    d === 'sent' ? s.messagesSent : s.messagesReceived,
  );
  channelCounter(
    'weft_gossip_bytes_total',
    'Mesh message bytes (before encryption), by channel and direction',
    (s, d) => (d === 'sent' ? s.bytesSent : s.bytesReceived),
  );
  // IPv4's gauges keep their names; IPv6's (a ring of its own) are weft_ipam6_*.
  for (const [prefix, family, status] of [
    ['weft_ipam', 'the allocation range', () => report().ipam],
    ['weft_ipam6', 'the IPv6 allocation range', () => report().ipam6],
  ] as const) {
    new Gauge({
      name: `${prefix}_addresses`,
      help: `Addresses of ${family}, by state: allocated here, free in the ring, owned by this peer (IPv6 counts are rounded past 2^53)`,
      labelNames: ['state'],
      ...reg,
      collect() {
        const ipam = status();
        if (!ipam) return;
        const mine = ipam.peers.find((p) => p.name === router.mesh.name);
        this.set({ state: 'allocated_here' }, ipam.allocatedHere);
        this.set(
          { state: 'free' },
          ipam.peers.reduce((t, p) => t + p.free, 0),
        );
        this.set({ state: 'owned_here' }, mine?.addresses ?? 0);
        this.set({ state: 'range' }, ipam.totalAddresses);
      },
    });
    new Gauge({
      name: `${prefix}_pending_requests`,
      help: `Allocations and claims of ${family} waiting (for the ring to start, or for space)`,
      ...reg,
      collect() {
        this.set(status()?.pending.length ?? 0);
      },
    });
  }
  new Gauge({
    name: 'weft_dns_entries',
    help: 'Names in the DNS table (all peers)',
    ...reg,
    collect() {
      this.set(report().dns.entries.length);
    },
  });
  /** A counter with one label, its values read from the router's own counters at each scrape. */
  const countersFrom = (name: string, help: string, label: string, read: () => Record<string, number> | null) =>
    new Counter({
      name,
      help,
      labelNames: [label],
      ...reg,
      collect() {
        this.reset();
        for (const [value, n] of Object.entries(read() ?? {})) this.inc({ [label]: value }, n);
      },
    });
  countersFrom('weft_dns_queries_total', 'DNS queries answered, by result', 'result', () => {
    const s = router.dns?.stats;
    return s
      ? { local: s.local, nxdomain: s.nxdomain, forwarded: s.forwarded, servfail: s.servfail, formerr: s.formerr }
      : null;
  });
  countersFrom('weft_fdb_entries_programmed_total', 'VXLAN fdb entries added and removed by the router', 'op', () => {
    const s = router.datapath?.stats;
    return s ? { added: s.fdbAdded, removed: s.fdbRemoved } : null;
  });
  countersFrom(
    'weft_sleeve_frames_total',
    'Ethernet frames carried by the sleeve: out (from local containers), in (to them), relayed',
    'direction',
    () => {
      const s = router.datapath?.sleeve?.counters();
      return s ? { out: s.framesOut, in: s.framesIn, relayed: s.relayed } : null;
    },
  );
  countersFrom(
    'weft_sleeve_bytes_total',
    'Ethernet frame bytes carried by the sleeve, by direction',
    'direction',
    () => {
      const s = router.datapath?.sleeve?.counters();
      return s ? { out: s.bytesOut, in: s.bytesIn } : null;
    },
  );
  countersFrom(
    'weft_sleeve_drops_total',
    'Sleeve packets not delivered, by reason (no route, refused: unknown sender or failed authentication, malformed, queue full)',
    'reason',
    () => {
      const c = router.datapath?.sleeve?.counters();
      return c
        ? {
            no_route: c.dropped,
            refused: c.refused,
            malformed: c.malformed,
            queue_full: (c.udp?.txDropped ?? 0) + (c.tap?.txDropped ?? 0),
          }
        : null;
    },
  );
  return registry;
}
