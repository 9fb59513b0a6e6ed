// Prometheus metrics, computed from the router's own state at each scrape
// (nothing is counted twice, and nothing can drift from what status shows).
// Served on --metrics-addr, /metrics.
import http from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Report } from './report.js';
import type { Router } from './router.js';

/** A short, fixed label for why a connection is not on fastdp (the full text is in status). */
export function fallbackCategory(reason: string | undefined): string {
  if (!reason) return 'unknown';
  if (/--no-fastdp/.test(reason)) return 'fastdp_off';
  if (/encrypt/.test(reason)) return 'encrypted';
  if (/no underlay address/.test(reason)) return 'no_address';
  if (/heartbeat/.test(reason)) return 'vxlan_unacknowledged';
  return 'other';
}

export function buildRegistry(router: Router): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'weft_' }); // weft_process_cpu_seconds_total, weft_nodejs_heap_size_used_bytes, ...
  // One report per scrape, shared by every metric's collect().
  let cached: { at: number; report: Report } | null = null;
  const report = (): Report => {
    if (!cached || Date.now() - cached.at > 100) cached = { at: Date.now(), report: router.report() };
    return cached.report;
  };
  const reg = { registers: [registry] };

  new Gauge({
    name: 'weft_connections',
    help: 'Connections and connection attempts, by state and overlay (fastdp, sleeve, none; "" before established)',
    labelNames: ['state', 'overlay'],
    ...reg,
    collect() {
      this.reset();
      for (const c of report().connections) this.inc({ state: c.state, overlay: c.overlay ?? '' });
    },
  });
  new Gauge({
    name: 'weft_connection_fallbacks',
    help: 'Established connections not on fastdp, by reason',
    labelNames: ['reason', 'overlay'],
    ...reg,
    collect() {
      this.reset();
      for (const c of report().connections) if (c.state === 'established' && c.overlay && c.overlay !== 'fastdp') this.inc({ reason: fallbackCategory(c.fallbackReason), overlay: c.overlay });
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
  const channelCounter = (name: string, help: string, pick: (s: { messagesSent: number; bytesSent: number; messagesReceived: number; bytesReceived: number }, dir: 'sent' | 'received') => number) =>
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
  channelCounter('weft_gossip_messages_total', 'Mesh messages, by channel and direction', (s, d) => (d === 'sent' ? s.messagesSent : s.messagesReceived));
  channelCounter('weft_gossip_bytes_total', 'Mesh message bytes (before encryption), by channel and direction', (s, d) => (d === 'sent' ? s.bytesSent : s.bytesReceived));
  new Gauge({
    name: 'weft_ipam_addresses',
    help: 'Addresses of the allocation range, by state: allocated here, free in the ring, owned by this peer',
    labelNames: ['state'],
    ...reg,
    collect() {
      const ipam = report().ipam;
      const mine = ipam.peers.find((p) => p.name === router.mesh.name);
      this.set({ state: 'allocated_here' }, ipam.allocatedHere);
      this.set({ state: 'free' }, ipam.peers.reduce((t, p) => t + p.free, 0));
      this.set({ state: 'owned_here' }, mine?.addresses ?? 0);
      this.set({ state: 'range' }, ipam.totalAddresses);
    },
  });
  new Gauge({
    name: 'weft_ipam_pending_requests',
    help: 'Allocations and claims waiting (for the ring to start, or for space)',
    ...reg,
    collect() {
      this.set(report().ipam.pending.length);
    },
  });
  new Gauge({
    name: 'weft_dns_entries',
    help: 'Names in the DNS table (all peers)',
    ...reg,
    collect() {
      this.set(report().dns.entries.length);
    },
  });
  new Counter({
    name: 'weft_dns_queries_total',
    help: 'DNS queries answered, by result',
    labelNames: ['result'],
    ...reg,
    collect() {
      this.reset();
      const s = router.dns?.stats;
      if (!s) return;
      this.inc({ result: 'local' }, s.local);
      this.inc({ result: 'nxdomain' }, s.nxdomain);
      this.inc({ result: 'forwarded' }, s.forwarded);
      this.inc({ result: 'servfail' }, s.servfail);
      this.inc({ result: 'formerr' }, s.formerr);
    },
  });
  new Counter({
    name: 'weft_fdb_entries_programmed_total',
    help: 'VXLAN fdb entries added and removed by the router',
    labelNames: ['op'],
    ...reg,
    collect() {
      this.reset();
      const s = router.datapath?.stats;
      if (!s) return;
      this.inc({ op: 'added' }, s.fdbAdded);
      this.inc({ op: 'removed' }, s.fdbRemoved);
    },
  });
  new Counter({
    name: 'weft_sleeve_frames_total',
    help: 'Ethernet frames carried by the sleeve: out (from local containers), in (to them), relayed',
    labelNames: ['direction'],
    ...reg,
    collect() {
      this.reset();
      const s = router.datapath?.sleeve?.stats;
      if (!s) return;
      this.inc({ direction: 'out' }, s.framesOut);
      this.inc({ direction: 'in' }, s.framesIn);
      this.inc({ direction: 'relayed' }, s.relayed);
    },
  });
  new Counter({
    name: 'weft_sleeve_bytes_total',
    help: 'Ethernet frame bytes carried by the sleeve, by direction',
    labelNames: ['direction'],
    ...reg,
    collect() {
      this.reset();
      const s = router.datapath?.sleeve?.stats;
      if (!s) return;
      this.inc({ direction: 'out' }, s.bytesOut);
      this.inc({ direction: 'in' }, s.bytesIn);
    },
  });
  new Counter({
    name: 'weft_sleeve_drops_total',
    help: 'Sleeve packets not delivered, by reason (no route, refused: unknown sender or failed authentication, malformed, queue full)',
    labelNames: ['reason'],
    ...reg,
    collect() {
      this.reset();
      const sl = router.datapath?.sleeve;
      if (!sl) return;
      const c = sl.counters();
      this.inc({ reason: 'no_route' }, c.dropped);
      this.inc({ reason: 'refused' }, c.refused);
      this.inc({ reason: 'malformed' }, c.malformed);
      this.inc({ reason: 'queue_full' }, (c.udp?.txDropped ?? 0) + (c.tap?.txDropped ?? 0));
    },
  });
  return registry;
}

/** Serves /metrics; resolves once listening. */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
