// The router's whole state as JSON (GET /report), from its components (the
// shape is router/contract.ts's; the status text is router/render.ts's).
import {
  type ConnectionMaker,
  type Mesh,
  type PeerName,
  type HandshakeFailure,
  PROTOCOL_MAX,
  PROTOCOL_MIN,
} from '../mesh/index.js';
import { VERSION } from '../lib/version.js';
import type { Allocator } from '../ipam/allocator.js';
import type { Addr6 } from '../net/addr6.js';
import type { Datapath } from '../datapath/datapath.js';
import type { NameService } from '../dns/table.js';
import type { DnsServer } from '../dns/server.js';
import type { DockerWatcher } from '../plugin/docker-watcher.js';
import type { PolicyEngine } from '../policy/engine.js';
import type { ServiceEngine } from '../services/engine.js';
import type { StateWrites } from '../lib/json-file.js';
import type { ConnectionReport, Report } from './contract.js';

export interface ReportSources {
  mesh: Mesh;
  maker: ConnectionMaker;
  ipam: Allocator;
  ipam6?: Allocator<Addr6>;
  datapath: Datapath | null;
  names: NameService;
  dns: DnsServer | null;
  failures: HandshakeFailure[];
  hasPassword: boolean;
  discovery: boolean;
  docker?: DockerWatcher | null;
  policy?: PolicyEngine | null;
  services?: ServiceEngine | null;
  writes?: StateWrites;
  /** weft rmpeer (router.ts removePeer). */
  removePeer?: (who: string) => Promise<{ peer: PeerName; addresses: number; removed: string[] }>;
}

const FAILURE_SHOWN_MS = 5 * 60_000;

export function buildReport(s: ReportSources): Report {
  const { mesh, maker } = s;
  const now = Date.now();
  const nick = (n: PeerName) => mesh.topology.get(n)?.nickname ?? null;
  const connections: ConnectionReport[] = [];
  for (const c of mesh.connections.values()) {
    const dp = s.datapath;
    let info = c.established ? 'encrypted' : 'encrypted; waiting for the peer to confirm';
    let overlay: ConnectionReport['overlay'];
    let fallbackReason: string | undefined;
    let pmtu: number | undefined;
    if (dp && c.established) {
      overlay = dp.overlayStatus(c.name);
      const why = dp.whyNotFastdp(c.name) ?? undefined;
      const hop = dp.sleeve?.hopStatus(c.name) ?? null;
      pmtu = hop?.pmtu;
      if (overlay === 'fastdp' || overlay === 'ovs') info += ` ${overlay} mtu=${dp.mtu}`;
      else if (overlay === 'sleeve') {
        fallbackReason = why;
        info += ` sleeve mtu=${dp.mtu} pmtu=${hop?.pmtu ?? '?'}${hop?.encrypted ? ' (data encrypted)' : ''}${hop && !hop.healthy ? ` [${hop.reason}]` : ''}; not ${dp.ovs ? 'ovs' : 'fastdp'}: ${why}`;
      } else {
        fallbackReason = why;
        info += `; no data path: ${why}${dp.sleeveError ? `; no sleeve: ${dp.sleeveError}` : ''}`;
      }
    }
    connections.push({
      address: c.link.remoteAddr,
      outbound: c.link.outbound,
      state: c.established ? 'established' : 'pending',
      peer: c.name,
      nickname: c.link.remote.nickname,
      overlay,
      mtu: overlay && overlay !== 'none' ? dp!.mtu : undefined,
      fallbackReason,
      pmtu,
      info,
    });
  }
  for (const t of maker.targets.values()) {
    if (t.state === 'connected') continue;
    const retry = t.nextTryAt > now ? `, retry in ${((t.nextTryAt - now) / 1000).toFixed(1)}s` : '';
    connections.push({
      address: t.addr,
      outbound: true,
      state: t.state,
      peer: t.peer,
      info: t.permanent
        ? `${t.lastError ?? ''} (not retried)`
        : t.lastError
          ? `${t.lastError}${t.state === 'failed' || t.state === 'waiting' ? retry : ''}`
          : '',
    });
  }
  for (const f of s.failures) {
    if (now - f.at > FAILURE_SHOWN_MS) continue;
    connections.push({
      address: f.addr,
      outbound: f.outbound,
      state: 'failed',
      info: `${f.reason} (${Math.round((now - f.at) / 1000)}s ago)`,
    });
  }
  const peers = mesh.topology.snapshot().map((e) => ({
    name: e.name,
    nickname: e.nickname,
    uid: e.uid,
    version: e.version,
    connections: e.connections.map((c) => ({
      name: c.peer,
      nickname: nick(c.peer),
      address: c.addr,
      outbound: c.outbound,
      established: c.established,
    })),
  }));
  const unicastRoutes = [...mesh.routes.unicastAll]
    .map(([dest, via]) => ({ dest, via }))
    .sort((a, b) => (a.dest < b.dest ? -1 : 1));
  const broadcastRoutes = peers.map((p) => ({ source: p.name, via: mesh.routes.broadcast(p.name, 'all') }));
  const targets = [...maker.targets.values()].map((t) => ({
    address: t.addr,
    direct: t.direct,
    state: t.state,
    peer: t.peer,
    error: t.lastError,
    retryInMs: t.state === 'failed' && t.nextTryAt > now ? t.nextTryAt - now : undefined,
  }));
  return {
    version: VERSION,
    protocol: { min: PROTOCOL_MIN, max: PROTOCOL_MAX },
    name: mesh.name,
    nickname: mesh.config.nickname,
    uid: mesh.config.uid,
    port: mesh.config.port,
    encryption: s.hasPassword ? 'password' : 'no password',
    discovery: s.discovery,
    connLimit: mesh.config.connLimit,
    peers,
    unicastRoutes,
    broadcastRoutes,
    connections,
    targets,
    gossip: { ...mesh.stats },
    ipam: s.ipam.status(),
    ...(s.ipam6 ? { ipam6: s.ipam6.status() } : {}),
    dns: {
      domain: s.dns?.config.domain ?? 'weft.local.',
      address: s.dns ? `${s.dns.config.host}:${s.dns.config.port}` : null,
      upstreams: s.dns?.config.upstreams ?? [],
      entries: s.names.table.all().sort((a, b) => (a.hostname < b.hostname ? -1 : a.hostname > b.hostname ? 1 : 0)),
      stats: s.dns ? { ...s.dns.stats } : null,
    },
    datapath: s.datapath
      ? {
          kind: s.datapath.ovs ? 'ovs' : 'fastdp',
          mtu: s.datapath.mtu,
          ...(s.datapath.ovs
            ? {
                ovs: {
                  bridge: s.datapath.ovs.config.bridge,
                  datapathType: s.datapath.ovs.config.datapathType,
                  ovsdb: s.datapath.ovs.config.ovsdb,
                  connected: s.datapath.ovs.connected,
                  datapathId: s.datapath.ovs.datapathId.toString(16).padStart(16, '0'),
                  ...s.datapath.ovs.stats,
                  lastError: s.datapath.ovs.lastError,
                },
              }
            : {}),
          localEndpoints: s.datapath.endpoints.local,
          exposed: [...s.datapath.exposed, ...s.datapath.exposed6],
          endpoints: s.datapath.endpoints.all(),
          stats: { ...s.datapath.stats },
          checks: s.datapath.checks,
          lastError: s.datapath.lastError,
          fastdp: s.datapath.config.fastdp,
          ipv6: s.datapath.carriesIpv6,
          sleeve: s.datapath.sleeve
            ? { running: true, error: null, ...s.datapath.sleeve.counters() }
            : { running: false, error: s.datapath.sleeveError },
        }
      : null,
    docker: s.docker ? { ...s.docker.status, pluginCalls: Object.fromEntries(s.docker.driver.calls) } : null,
    policy: s.policy ? s.policy.summary() : null,
    services: s.services ? { range: s.services.rangeText, ...s.services.summary() } : null,
    state: s.writes?.problems() ?? [],
  };
}
