// The status text `weft status` prints, and the router serves at /status, from
// the report (router/contract.ts). It is an interface people and scripts read:
// keep it stable. Nothing here loads at run time but this file.
import type { Report } from './contract.js';
import type { IpamStatus } from '../ipam/allocator.js';
import type { PolicyStatus } from '../policy/engine.js';

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
    [
      'Connections',
      `${live} (${established} established${failed ? `, ${failed} failed: see weft status connections` : ''})`,
    ],
    ...overlaySummary(r),
    ['Peers', `${r.peers.length} (with ${peerConns} established connections)`],
    ['ConnLimit', r.connLimit === 0 ? 'none' : String(r.connLimit)],
    [
      'IPAM',
      `${r.ipam.state}${r.ipam.pending.length ? ` (${r.ipam.pending.length} request(s) waiting; see weft status ipam)` : ''}`,
    ],
    ['Range', `${r.ipam.range}, default subnet ${r.ipam.defaultSubnet}`],
    ...(r.ipam6
      ? [
          [
            'Range6',
            `${r.ipam6.range}, default subnet ${r.ipam6.defaultSubnet}; ${r.ipam6.state.startsWith('idle') ? 'not started (the first IPv6 allocation starts it)' : r.ipam6.state === 'ready' ? 'ready' : 'waiting (see weft status ipam)'}`,
          ] as [string, string],
        ]
      : []),
    [
      'DNS',
      r.dns.address
        ? `${r.dns.domain} on ${r.dns.address}, ${r.dns.entries.length} name(s), upstream ${r.dns.upstreams.join(' ') || 'none'}`
        : 'off',
    ],
    [
      'Datapath',
      r.datapath
        ? `${datapathKind(r.datapath)}, ${r.datapath.sleeve.running ? 'sleeve (userspace UDP)' : `no sleeve (${r.datapath.sleeve.error})`}, mtu ${r.datapath.mtu}${r.datapath.ipv6 ? ', dual-stack (IPv4 and IPv6)' : ''}, ${r.datapath.localEndpoints.length} container(s) attached here${r.datapath.exposed.length ? `, host exposed as ${r.datapath.exposed.join(' ')}` : ''}${r.datapath.lastError ? `; last error: ${r.datapath.lastError}` : ''}${r.datapath.checks && !r.datapath.checks.watching ? `; bridge and firewall checked every 5 s (${r.datapath.checks.notWatching ?? 'not told of kernel changes'})` : ''}`
        : 'none (control plane only)',
    ],
    ['Policy', policyLine(r.policy)],
    [
      'Services',
      r.services
        ? `${r.services.services} in ${r.services.range}${r.services.served < r.services.services ? ` (${r.services.services - r.services.served} waiting for a new VIP)` : ''}, translated in ${r.services.containersProgrammed} container(s) here${r.services.lastError ? `; last error: ${r.services.lastError}` : ''} (weft service list)`
        : 'off',
    ],
    ['Docker', dockerLine(r.docker)],
    ...r.state.map((p): [string, string] => [
      'State',
      `NOT SAVED since ${new Date(p.since).toISOString()} (${p.count} failed write(s)): ${p.path}: ${p.error}; the change is in force, but a restart would lose it`,
    ]),
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
  const plugin = d.plugin ? `network plugin "weft" at ${d.plugin}` : (d.pluginError ?? 'no network plugin');
  return `engine ${d.version ?? '?'} at ${d.api}, ${plugin}`;
}

function datapathKind(d: NonNullable<Report['datapath']>): string {
  if (d.ovs) {
    const state = d.ovs.connected
      ? 'controller connected'
      : `controller not connected${d.ovs.lastError ? `: ${d.ovs.lastError}` : ''}`;
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
        (c) =>
          `   ${c.outbound ? '->' : '<-'} ${pad(c.address, 21)} ${pad(`${c.name}(${c.nickname ?? '?'})`, 30)} ${c.established ? 'established' : 'pending'}`,
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
  const v4 = renderIpamFamily(r.ipam, '');
  return r.ipam6 ? `${v4}\nIPv6\n${renderIpamFamily(r.ipam6, '  ')}` : v4;
}

/** A count of addresses: exact up to a trillion, then as a power of two (an IPv6 range has 2^80). */
function addressCount(n: number): string {
  return n < 1e12 ? String(n) : `2^${Math.round(Math.log2(n))}`;
}

function renderIpamFamily(i: IpamStatus, indent: string): string {
  const out = [
    `Allocation range: ${i.range} (${addressCount(i.totalAddresses)} addresses), default subnet ${i.defaultSubnet}`,
    `Initialisation:   ${i.init}${i.seeds.length ? `; ring started by ${i.seeds.join(', ')}` : ''}`,
    `Status:           ${i.state}`,
    `Allocated here:   ${i.allocatedHere} address(es) to ${i.owned.length} container(s)`,
  ];
  if (i.peers.length > 0) {
    out.push('Peers:');
    for (const p of i.peers.sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const who = `${p.name}(${p.nickname ?? '?'})`;
      const warn = p.reachable ? '' : `  - unreachable! if it is gone for good: weft rmpeer ${p.name}`;
      out.push(
        `  ${pad(who, 32)} ${addressCount(p.addresses).padStart(9)} addresses (${p.percent.toFixed(1)}%), ${addressCount(p.free)} free${warn}`,
      );
    }
  }
  if (i.pending.length > 0) {
    out.push('Waiting:');
    for (const p of i.pending) {
      const what =
        p.kind === 'prime'
          ? 'prime'
          : p.kind === 'claim'
            ? `claim ${p.addr} for ${p.ident}`
            : `allocate for ${p.ident} in ${p.subnet}`;
      out.push(`  ${what}, for ${(p.waitingMs / 1000).toFixed(1)}s: ${p.reason}`);
    }
  }
  if (i.conflicts.length > 0) {
    out.push('Conflicts:');
    for (const c of i.conflicts) out.push(`  ${c}`);
  }
  return out.map((l) => indent + l).join('\n') + '\n';
}

export function renderPs(r: Report): string {
  const eps = r.datapath?.localEndpoints ?? [];
  return (
    eps
      .map(
        (e) =>
          `${e.container} ${e.mac} ${[...e.cidrs, ...(e.cidrs6 ?? [])].join(' ')}${e.groups && e.groups.length > 0 ? ` groups=${e.groups.join(',')}` : ''}`,
      )
      .join('\n') + (eps.length ? '\n' : '')
  );
}

export function renderDns(r: Report): string {
  if (r.dns.entries.length === 0) return r.dns.address ? 'no names registered\n' : 'DNS is off on this router\n';
  const domain = r.dns.domain.replace(/\.$/, '');
  return (
    r.dns.entries
      .map(
        (e) =>
          `${pad(e.hostname.replace(/\.$/, '').replace(new RegExp(`\\.${domain.replaceAll('.', '\\.')}$`), ''), 16)} ${pad(e.ip, e.ip.includes(':') ? 39 : 15)} ${pad(e.container, 24)} ${e.origin}`,
      )
      .join('\n') + '\n'
  );
}

/** `weft status policy`. */
export function renderPolicyStatus(st: PolicyStatus): string {
  const lines = [
    `${st.rules} rule(s) in the mesh; ${st.limitedHere} container(s) here limited by them${st.lastError ? `; last error: ${st.lastError}` : ''}`,
  ];
  if (!st.enforced) lines.push(`NOT enforced here: ${st.notEnforced.join('; ')}`);
  lines.push(
    `flows cut after revocations: ${st.flowsCut} (their packets dropped here since the last rewrite: ${st.revokedDropped}); rule rewrites: ${st.rewrites}; membership updates: ${st.elementUpdates}`,
  );
  if (st.removals.kept > 0)
    lines.push(
      `removed rules remembered until every peer has the removal: ${st.removals.kept}` +
        (st.removals.waitingFor.length > 0
          ? `; waiting for ${st.removals.waitingFor.join(', ')} (a peer gone for good: weft rmpeer NAME)`
          : ''),
    );
  for (const a of st.allowed) lines.push(`  rule ${a.rule}: ${a.packets} packet(s) allowed here`);
  for (const d of st.dropped) lines.push(`  ${d.group} ${d.direction}: ${d.packets} packet(s) dropped here`);
  return lines.join('\n') + '\n';
}
