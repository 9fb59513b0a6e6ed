// The router's whole state as JSON (GET /report), and what `weft status` prints
// from it. Status text is an interface people and scripts read: keep it stable.
import { type ConnectionMaker, type Mesh, type PeerName, type HandshakeFailure, PROTOCOL_MAX, PROTOCOL_MIN } from '../mesh/index.js';
import { VERSION } from '../lib/version.js';
import type { Allocator, IpamStatus } from '../ipam/allocator.js';
import type { Datapath } from '../datapath/datapath.js';
import type { NameService } from '../dns/table.js';
import type { DnsServer } from '../dns/server.js';
import type { DockerStatus, DockerWatcher } from '../plugin/docker-watcher.js';
import type { PolicyEngine } from '../policy/engine.js';
import type { ServiceEngine } from '../services/engine.js';
import type { StateWrites } from '../lib/json-file.js';


export interface ConnectionReport {
  address: string;
  outbound: boolean;
  /** The data path to this peer: fastdp (ovs on the OVS datapath) when its VXLAN heartbeats are acknowledged, else the sleeve. */
  overlay?: 'fastdp' | 'ovs' | 'sleeve' | 'none';
  mtu?: number;
  /** Why this connection is not on fastdp (when it is not). */
  fallbackReason?: string;
  /** The sleeve's path MTU to this peer (IP packet size), from probes. */
  pmtu?: number;
  state: 'established' | 'pending' | 'connecting' | 'retrying' | 'failed' | 'waiting';
  peer?: PeerName;
  nickname?: string;
  info: string;
}

export interface Report {
  version: string;
  protocol: { min: number; max: number };
  name: PeerName;
  nickname: string;
  uid: string;
  port: number;
  encryption: 'password' | 'no password';
  discovery: boolean;
  connLimit: number;
  peers: { name: PeerName; nickname: string; uid: string; version: number; connections: { name: PeerName; nickname: string | null; address: string; outbound: boolean; established: boolean }[] }[];
  unicastRoutes: { dest: PeerName; via: PeerName }[];
  broadcastRoutes: { source: PeerName; via: PeerName[] }[];
  connections: ConnectionReport[];
  targets: { address: string; direct: boolean; state: string; peer?: PeerName; error?: string; retryInMs?: number }[];
  gossip: { messagesSent: number; bytesSent: number; messagesReceived: number; bytesReceived: number; gossipErrors: number; protocolErrors: number };
  ipam: IpamStatus;
  dns: {
    domain: string;
    address: string | null;
    upstreams: string[];
    entries: { hostname: string; container: string; ip: string; origin: PeerName }[];
    stats: { queries: number; local: number; nxdomain: number; forwarded: number; servfail: number; formerr: number } | null;
  };
  datapath: null | {
    kind: 'fastdp' | 'ovs';
    mtu: number;
    /** The OVS datapath's bridge, when it is the one. */
    ovs?: { bridge: string; datapathType: string; ovsdb: string; connected: boolean; datapathId: string; flowsAdded: number; flowsRemoved: number; reconnects: number; lastError: string | null };
    localEndpoints: { container: string; mac: string; cidrs: string[]; groups?: string[] }[];
    exposed: string[];
    endpoints: { container: string; mac: string; cidrs: string[]; peer: PeerName }[];
    stats: { fdbAdded: number; fdbRemoved: number; repairs: number; errors: number };
    lastError: string | null;
    /** Whether the kernel VXLAN path may be used (--no-fastdp turns it off). */
    fastdp: boolean;
    /** The userspace sleeve: running with its counters, or why not. */
    sleeve: { running: boolean; error: string | null; [counter: string]: unknown };
  };
  /** The Docker engine weft follows and the network plugin it serves (null: Docker support off). */
  docker: (DockerStatus & { pluginCalls: Record<string, number> }) | null;
  /** Security groups: rules in the mesh, containers here that some rule limits. */
  policy: { rules: number; limitedHere: number; lastError: string | null; notEnforced: string[] } | null;
  /** State files that could not be written (a full disk): what changed is in force, but would be lost at a restart. */
  state: { path: string; error: string; since: number; count: number }[];
  /** Services: how many, how many serve their VIP, local containers whose namespace translates them. */
  services: ({ range: string } & ReturnType<ServiceEngine['summary']>) | null;
}

export interface ReportSources {
  mesh: Mesh;
  maker: ConnectionMaker;
  ipam: Allocator;
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
      info: t.permanent ? `${t.lastError ?? ''} (not retried)` : t.lastError ? `${t.lastError}${t.state === 'failed' || t.state === 'waiting' ? retry : ''}` : '',
    });
  }
  for (const f of s.failures) {
    if (now - f.at > FAILURE_SHOWN_MS) continue;
    connections.push({ address: f.addr, outbound: f.outbound, state: 'failed', info: `${f.reason} (${Math.round((now - f.at) / 1000)}s ago)` });
  }
  const peers = mesh.topology.snapshot().map((e) => ({
    name: e.name,
    nickname: e.nickname,
    uid: e.uid,
    version: e.version,
    connections: e.connections.map((c) => ({ name: c.peer, nickname: nick(c.peer), address: c.addr, outbound: c.outbound, established: c.established })),
  }));
  const unicastRoutes = [...mesh.routes.unicastAll].map(([dest, via]) => ({ dest, via })).sort((a, b) => (a.dest < b.dest ? -1 : 1));
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
          exposed: s.datapath.exposed,
          endpoints: s.datapath.endpoints.all(),
          stats: { ...s.datapath.stats },
          lastError: s.datapath.lastError,
          fastdp: s.datapath.config.fastdp,
          sleeve: s.datapath.sleeve ? { running: true, error: null, ...s.datapath.sleeve.counters() } : { running: false, error: s.datapath.sleeveError },
        }
      : null,
    docker: s.docker ? { ...s.docker.status, pluginCalls: Object.fromEntries(s.docker.driver.calls) } : null,
    policy: s.policy ? s.policy.summary() : null,
    services: s.services ? { range: s.services.rangeText, ...s.services.summary() } : null,
    state: s.writes?.problems() ?? [],
  };
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

export function renderStatus(r: Report): string {
  const established = r.connections.filter((c) => c.state === 'established').length;
  const failed = r.connections.filter((c) => c.state === 'failed').length;
  const live = r.connections.filter((c) => c.state === 'established' || c.state === 'pending').length;
  const peerConns = r.peers.reduce((n, p) => n + p.connections.filter((c) => c.established).length, 0);
  const lines: [string, string][] = [
    ['Version', `${r.version} (protocol ${r.protocol.min}..${r.protocol.max})`],
    ['Name', `${r.name}(${r.nickname})`],
    ['Port', String(r.port)],
    ['Encryption', r.encryption === 'password' ? 'enabled, password set' : 'enabled, no password (any peer may join)'],
    ['PeerDiscovery', r.discovery ? 'enabled' : 'disabled'],
    ['Targets', String(r.targets.filter((t) => t.direct).length)],
    ['Connections', `${live} (${established} established${failed ? `, ${failed} failed: see weft status connections` : ''})`],
    ...overlaySummary(r),
    ['Peers', `${r.peers.length} (with ${peerConns} established connections)`],
    ['ConnLimit', r.connLimit === 0 ? 'none' : String(r.connLimit)],
    ['IPAM', `${r.ipam.state}${r.ipam.pending.length ? ` (${r.ipam.pending.length} request(s) waiting; see weft status ipam)` : ''}`],
    ['Range', `${r.ipam.range}, default subnet ${r.ipam.defaultSubnet}`],
    ['DNS', r.dns.address ? `${r.dns.domain} on ${r.dns.address}, ${r.dns.entries.length} name(s), upstream ${r.dns.upstreams.join(' ') || 'none'}` : 'off'],
    ['Datapath', r.datapath ? `${datapathKind(r.datapath)}, ${r.datapath.sleeve.running ? 'sleeve (userspace UDP)' : `no sleeve (${r.datapath.sleeve.error})`}, mtu ${r.datapath.mtu}, ${r.datapath.localEndpoints.length} container(s) attached here${r.datapath.exposed.length ? `, host exposed as ${r.datapath.exposed.join(' ')}` : ''}${r.datapath.lastError ? `; last error: ${r.datapath.lastError}` : ''}` : 'none (control plane only)'],
    ['Policy', policyLine(r.policy)],
    ['Services', r.services ? `${r.services.services} in ${r.services.range}${r.services.served < r.services.services ? ` (${r.services.services - r.services.served} waiting for a new VIP)` : ''}, translated in ${r.services.containersProgrammed} container(s) here${r.services.lastError ? `; last error: ${r.services.lastError}` : ''} (weft service list)` : 'off'],
    ['Docker', dockerLine(r.docker)],
    ...r.state.map((p): [string, string] => ['State', `NOT SAVED since ${new Date(p.since).toISOString()} (${p.count} failed write(s)): ${p.path}: ${p.error}; the change is in force, but a restart would lose it`]),
  ];
  return lines.map(([k, v]) => `${k.padStart(16)}: ${v}`).join('\n') + '\n';
}

function policyLine(p: Report['policy']): string {
  if (!p) return 'off';
  const head = `${p.rules} rule(s), ${p.limitedHere} container(s) here limited by them`;
  if (p.notEnforced.length > 0) return `${head}; NOT enforced: ${p.notEnforced.join('; ')} (weft status policy)`;
  return `${head}${p.lastError ? `; last error: ${p.lastError}` : ''} (weft status policy)`;
}

function dockerLine(d: Report['docker']): string {
  if (!d) return 'off';
  if (!d.connected) return `not connected to ${d.api} (${d.state})`;
  const plugin = d.plugin ? `network plugin "weft" at ${d.plugin}` : d.pluginError ?? 'no network plugin';
  return `engine ${d.version ?? '?'} at ${d.api}, ${plugin}`;
}

function datapathKind(d: NonNullable<Report['datapath']>): string {
  if (d.ovs) {
    const state = d.ovs.connected ? 'controller connected' : `controller not connected${d.ovs.lastError ? `: ${d.ovs.lastError}` : ''}`;
    return `${d.fastdp ? 'ovs' : 'ovs (VXLAN off)'} (OVS bridge ${d.ovs.bridge}, ${d.ovs.datapathType} datapath, ${state})`;
  }
  return d.fastdp ? 'fastdp (kernel VXLAN)' : 'fastdp off';
}

/** A status line saying how established connections carry data, when any is not on fastdp. */
function overlaySummary(r: Report): [string, string][] {
  const est = r.connections.filter((c) => c.state === 'established' && c.overlay);
  const by = (o: string) => est.filter((c) => c.overlay === o).length;
  const fast = by('fastdp') + by('ovs');
  if (est.length === 0 || fast === est.length) return [];
  const parts = [`${fast} ${by('ovs') > 0 ? 'ovs' : 'fastdp'}`, `${by('sleeve')} sleeve`];
  if (by('none')) parts.push(`${by('none')} with no data path`);
  return [['Overlays', `${parts.join(', ')} (why: weft status connections)`]];
}

export function renderConnections(r: Report): string {
  if (r.connections.length === 0) return 'no connections (connect with: weft connect HOST)\n';
  return (
    r.connections
      .map((c) => {
        const who = c.peer ? `${c.peer}(${c.nickname ?? '?'})` : '';
        return `${c.outbound ? '->' : '<-'} ${pad(c.address, 21)} ${pad(c.state, 11)} ${pad(who, 30)} ${c.info}`.trimEnd();
      })
      .join('\n') + '\n'
  );
}

export function renderPeers(r: Report): string {
  return r.peers
    .map((p) => {
      const head = `${p.name}(${p.nickname})`;
      const conns = p.connections.map(
        (c) => `   ${c.outbound ? '->' : '<-'} ${pad(c.address, 21)} ${pad(`${c.name}(${c.nickname ?? '?'})`, 30)} ${c.established ? 'established' : 'pending'}`,
      );
      return [head, ...conns].join('\n');
    })
    .join('\n')
    .concat('\n');
}

export function renderTargets(r: Report): string {
  const direct = r.targets.filter((t) => t.direct);
  if (direct.length === 0) return '';
  return direct.map((t) => t.address).join('\n') + '\n';
}

export function renderIpam(r: Report): string {
  const i = r.ipam;
  const out = [
    `Allocation range: ${i.range} (${i.totalAddresses} addresses), default subnet ${i.defaultSubnet}`,
    `Initialisation:   ${i.init}${i.seeds.length ? `; ring started by ${i.seeds.join(', ')}` : ''}`,
    `Status:           ${i.state}`,
    `Allocated here:   ${i.allocatedHere} address(es) to ${i.owned.length} container(s)`,
  ];
  if (i.peers.length > 0) {
    out.push('Peers:');
    for (const p of i.peers.sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const who = `${p.name}(${p.nickname ?? '?'})`;
      const warn = p.reachable ? '' : `  - unreachable! if it is gone for good: weft rmpeer ${p.name}`;
      out.push(`  ${pad(who, 32)} ${String(p.addresses).padStart(9)} addresses (${p.percent.toFixed(1)}%), ${p.free} free${warn}`);
    }
  }
  if (i.pending.length > 0) {
    out.push('Waiting:');
    for (const p of i.pending) {
      const what = p.kind === 'prime' ? 'prime' : p.kind === 'claim' ? `claim ${p.addr} for ${p.ident}` : `allocate for ${p.ident} in ${p.subnet}`;
      out.push(`  ${what}, for ${(p.waitingMs / 1000).toFixed(1)}s: ${p.reason}`);
    }
  }
  if (i.conflicts.length > 0) {
    out.push('Conflicts:');
    for (const c of i.conflicts) out.push(`  ${c}`);
  }
  return out.join('\n') + '\n';
}

export function renderPs(r: Report): string {
  const eps = r.datapath?.localEndpoints ?? [];
  return eps.map((e) => `${e.container} ${e.mac} ${e.cidrs.join(' ')}${e.groups && e.groups.length > 0 ? ` groups=${e.groups.join(',')}` : ''}`).join('\n') + (eps.length ? '\n' : '');
}

export function renderDns(r: Report): string {
  if (r.dns.entries.length === 0) return r.dns.address ? 'no names registered\n' : 'DNS is off on this router\n';
  const domain = r.dns.domain.replace(/\.$/, '');
  return (
    r.dns.entries
      .map((e) => `${pad(e.hostname.replace(/\.$/, '').replace(new RegExp(`\\.${domain.replaceAll('.', '\\.')}$`), ''), 16)} ${pad(e.ip, 15)} ${pad(e.container, 24)} ${e.origin}`)
      .join('\n') + '\n'
  );
}
