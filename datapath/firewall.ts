// weft's firewall: one nftables table, `inet weft`, written whole in one atomic
// `nft -f` transaction from the current state, checked every few seconds and
// rewritten if flushed or changed. nftables is the project's one firewall.
//
// - forward: overlay traffic across the bridge is accepted (bridged IPv4 meets
//   the inet forward hook through br_netfilter); so is traffic between the
//   overlay and the host's other links for exposed subnets (replies by conntrack).
// - postrouting: exposed subnets are masqueraded when they leave by another link.
// - input: what containers reach of the host (the DNS server; the rest only when
//   the host is exposed to them, and never the router's own ports), and the
//   underlay addresses whose VXLAN and sleeve datagrams are taken (our peers).
//   Stateless on purpose: a `ct` match would turn on connection tracking for
//   every packet of the host, which costs the datapath (bench/README.md).
// A host firewall whose FORWARD policy is DROP (Docker sets one) would still drop
// bridged traffic, since every base chain must accept: for that case weft also
// inserts one accept rule for the bridge into `ip filter FORWARD` (and `ip6 filter FORWARD`) when that
// chain exists, and removes it again on reset.
import { BRIDGE } from './bridge.js';
import { nft } from '../net/command.js';
import { type NftJson, nftObjects, nftSession } from '../net/nft-session.js';
import { GUARD_TABLE } from './port-guard.js';

export const TABLE = 'weft';
/** Security groups' table of revoked connections (policy/nft.ts): outlives TABLE's rewrites. */
export const REVOKED_TABLE = 'weft_revoked';

export interface FirewallState {
  /** Subnets exposed on this host ("ip/prefix" of the subnet). */
  exposed: string[];
  /** IPv6 subnets exposed on this host. */
  exposed6?: string[];
  /** Whether the IPv6 ones are masqueraded when they leave (--ipv6-nat); routed otherwise. */
  nat66?: boolean;
  /** The host's own IPv6 addresses on the bridge (exposed, the DNS server's): Neighbour Discovery may reach them. */
  hostAddrs6?: string[];
  /** Security groups (policy/nft.ts): sets and chains, and the forward-chain lines that use them. */
  policy?: { lines: string[]; hooks: string[]; revokedTable: string[] };
  /** What containers may reach of the host: the DNS server, and never these ports of the router's. */
  host: { dns: { ip: string; port: number; ip6?: string } | null; routerPorts: { tcp: number[]; udp: number[] } };
  /** The underlay: datagrams to these ports are taken only from these addresses. */
  underlay: UnderlayPeers;
}

export interface UnderlayPeers {
  vxlanPort: number;
  sleevePort: number;
  /** Peers (either family) whose VXLAN is taken: connected and unencrypted, or still programmed on fastdp (a router restarting). */
  vxlan: string[];
  /** Peers whose sleeve datagrams are taken: connected. */
  sleeve: string[];
}

/** The named sets of the underlay's peers, one per family, kept current by element updates. */
const PEER_SETS = { vxlan: 'vxlan_peers', sleeve: 'sleeve_peers' } as const;
const setName = (k: keyof typeof PEER_SETS, six: boolean) => `${PEER_SETS[k]}${six ? '6' : ''}`;
const isSix = (a: string) => a.includes(':');

const ports = (ps: number[]) =>
  ps.length === 1 ? String(ps[0]) : `{ ${[...new Set(ps)].sort((a, b) => a - b).join(', ')} }`;
const setDecl = (name: string, six: boolean, elements: string[]) =>
  `  set ${name} { type ${six ? 'ipv6_addr' : 'ipv4_addr'};${elements.length > 0 ? ` elements = { ${[...new Set(elements)].sort().join(', ')} }` : ''} }`;
/** A peer set of each family, with the addresses of that family. */
const peerSetDecls = (k: keyof typeof PEER_SETS, addrs: string[]) => [
  setDecl(
    setName(k, false),
    false,
    addrs.filter((a) => !isSix(a)),
  ),
  setDecl(setName(k, true), true, addrs.filter(isSix)),
];

function inputChains(s: FirewallState, exposed: string | null, exposed6: string | null): string[] {
  const { dns, routerPorts } = s.host;
  const u = s.underlay;
  const all = [...routerPorts.tcp, ...routerPorts.udp];
  return [
    ...peerSetDecls('vxlan', u.vxlan),
    ...peerSetDecls('sleeve', u.sleeve),
    `  chain input {`,
    `    type filter hook input priority filter - 10; policy accept;`,
    // The DNS server's IPv6 address is routable (a ULA): only containers (and the host) may use it.
    // IPv6 does not drop packets from the host's own addresses, so a forged one could make the server talk to itself.
    ...(dns?.ip6
      ? [
          `    ip6 daddr ${dns.ip6} iifname != { "lo", "${BRIDGE}" } counter drop comment "the DNS server's IPv6 address from outside"`,
          `    ip6 saddr ${dns.ip6} iifname != "lo" counter drop comment "the DNS server's IPv6 address forged"`,
        ]
      : []),
    `    iifname "${BRIDGE}" jump from_containers`,
    `    udp dport ${u.vxlanPort} ip saddr != @${setName('vxlan', false)} counter drop comment "VXLAN from no peer of ours"`,
    `    udp dport ${u.sleevePort} ip saddr != @${setName('sleeve', false)} counter drop comment "sleeve datagrams from no peer of ours"`,
    `    udp dport ${u.vxlanPort} ip6 saddr != @${setName('vxlan', true)} counter drop comment "VXLAN over IPv6 from no peer of ours"`,
    `    udp dport ${u.sleevePort} ip6 saddr != @${setName('sleeve', true)} counter drop comment "sleeve datagrams over IPv6 from no peer of ours"`,
    `  }`,
    `  chain from_containers {`,
    ...(dns
      ? [
          `    ip daddr ${dns.ip} udp dport ${dns.port} accept comment "containers ask the DNS server"`,
          `    ip daddr ${dns.ip} tcp dport ${dns.port} accept comment "containers ask the DNS server over TCP"`,
          ...(dns.ip6
            ? [
                `    ip6 daddr ${dns.ip6} udp dport ${dns.port} accept comment "containers ask the DNS server over IPv6"`,
                `    ip6 daddr ${dns.ip6} tcp dport ${dns.port} accept comment "containers ask the DNS server over IPv6 and TCP"`,
              ]
            : []),
        ]
      : []),
    ...(all.length > 0
      ? [
          `    meta l4proto { tcp, udp } th dport ${ports(all)} counter drop comment "the router's ports are not for containers"`,
        ]
      : []),
    ...(exposed ? [`    ip saddr ${exposed} accept comment "the host is exposed to these subnets"`] : []),
    ...(exposed6 ? [`    ip6 saddr ${exposed6} accept comment "the host is exposed to these IPv6 subnets"`] : []),
    // The host resolving a container it answers (DNS over IPv6, an exposed subnet) hears its
    // Neighbour Advertisement; a container resolving its gateway may ask from its link-local address.
    ...((s.hostAddrs6 ?? []).length > 0
      ? [
          `    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 ip6 daddr { ff02::1:ff00:0/104, ${s.hostAddrs6!.join(', ')} } accept comment "neighbour discovery with the host"`,
        ]
      : []),
    `    tcp flags & (syn | ack) != syn accept comment "no new connection: replies to the host's own"`,
    `    icmp type { echo-reply, destination-unreachable, time-exceeded, parameter-problem } accept comment "ICMP answers and errors"`,
    ...(exposed6
      ? [
          `    icmpv6 type { echo-reply, destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept comment "ICMPv6 answers and errors"`,
        ]
      : []),
    `    counter drop comment "nothing else of the host is for containers"`,
    `  }`,
  ];
}

export function ruleset(s: FirewallState): string {
  const exposed = s.exposed.length > 0 ? `{ ${s.exposed.join(', ')} }` : null;
  const exposed6 = (s.exposed6 ?? []).length > 0 ? `{ ${s.exposed6!.join(', ')} }` : null;
  const routerPorts = [...s.host.routerPorts.tcp, ...s.host.routerPorts.udp];
  return [
    `table inet ${TABLE}`,
    `delete table inet ${TABLE}`,
    `table inet ${TABLE} {`,
    `  chain forward {`,
    `    type filter hook forward priority filter - 10; policy accept;`,
    ...(s.policy?.hooks ?? []),
    `    iifname "${BRIDGE}" oifname "${BRIDGE}" accept comment "overlay traffic across the bridge"`,
    // Routed out of an exposed subnet (masqueraded as this host, or not), a container could reach
    // other hosts' routers as this host: their peer sets take VXLAN and sleeve datagrams by address.
    ...(routerPorts.length > 0
      ? (['vxlan', 'sleeve'] as const).flatMap((k) => [
          `    iifname "${BRIDGE}" ip daddr @${setName(k, false)} meta l4proto { tcp, udp } th dport ${ports(routerPorts)} counter drop comment "containers reach no peer's router ports (${k} peers)"`,
          `    iifname "${BRIDGE}" ip6 daddr @${setName(k, true)} meta l4proto { tcp, udp } th dport ${ports(routerPorts)} counter drop comment "containers reach no peer's router ports (${k} peers, IPv6)"`,
        ])
      : []),
    // The host's routes back to its containers (for DNS replies) must not carry traffic in from outside.
    exposed6
      ? `    iifname != "${BRIDGE}" oifname "${BRIDGE}" ip6 daddr != ${exposed6} counter drop comment "nothing routed into the overlay over IPv6 but to exposed subnets"`
      : `    iifname != "${BRIDGE}" oifname "${BRIDGE}" meta nfproto ipv6 counter drop comment "nothing routed into the overlay over IPv6"`,
    ...(exposed
      ? [
          `    iifname "${BRIDGE}" ip saddr ${exposed} accept comment "exposed subnets out"`,
          `    oifname "${BRIDGE}" ip daddr ${exposed} ct state established,related accept comment "replies to exposed subnets"`,
        ]
      : []),
    ...(exposed6
      ? [
          `    iifname "${BRIDGE}" ip6 saddr ${exposed6} accept comment "exposed IPv6 subnets out"`,
          `    oifname "${BRIDGE}" ip6 daddr ${exposed6} ct state established,related accept comment "replies to exposed IPv6 subnets"`,
          // Routed (no NAT), the subnet is addressable from outside: as behind NAT, only replies come in.
          `    oifname "${BRIDGE}" ip6 daddr ${exposed6} counter drop comment "no new connections into exposed IPv6 subnets"`,
        ]
      : []),
    `  }`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    ...(exposed
      ? [
          `    oifname != "${BRIDGE}" ip saddr ${exposed} ip daddr != ${exposed} masquerade comment "exposed subnets to the outside"`,
        ]
      : []),
    ...(exposed6 && s.nat66
      ? [
          `    oifname != "${BRIDGE}" ip6 saddr ${exposed6} ip6 daddr != ${exposed6} masquerade comment "exposed IPv6 subnets to the outside (--ipv6-nat)"`,
        ]
      : []),
    `  }`,
    ...inputChains(s, exposed, exposed6),
    ...(s.policy?.lines ?? []),
    `}`,
    // Kept while a policy applies here (its sets hold what the kernel remembered), else removed.
    ...(s.policy?.revokedTable ?? [`table inet ${REVOKED_TABLE}`, `delete table inet ${REVOKED_TABLE}`]),
    '',
  ].join('\n');
}

/** One transaction that turns the peer sets from `have` into `want`; '' when nothing changes. */
export function peerSetUpdates(have: UnderlayPeers, want: UnderlayPeers): string {
  const out: string[] = [];
  for (const k of ['vxlan', 'sleeve'] as const)
    for (const six of [false, true]) {
      const before = new Set(have[k].filter((a) => isSix(a) === six));
      const now = new Set(want[k].filter((a) => isSix(a) === six));
      const add = [...now].filter((a) => !before.has(a));
      const del = [...before].filter((a) => !now.has(a));
      if (add.length > 0) out.push(`add element inet ${TABLE} ${setName(k, six)} { ${add.join(', ')} }`);
      if (del.length > 0) out.push(`delete element inet ${TABLE} ${setName(k, six)} { ${del.join(', ')} }`);
    }
  return out.length > 0 ? out.join('\n') + '\n' : '';
}

/** Writes the whole table in one transaction. */
export async function applyFirewall(s: FirewallState): Promise<void> {
  await nft(['-f', '-'], ruleset(s));
  await ensureForwardAccept();
}

/**
 * Why our tables are not there with the rules for this state (a flush or edit shows as a difference);
 * null when they are. Throws when the ruleset or the host's FORWARD chains cannot be listed.
 */
export async function firewallDiffers(s: FirewallState, guard: string): Promise<string | null> {
  let listing: NftJson;
  try {
    listing = await nftSession.list('list ruleset');
  } catch (err) {
    // An error, not a difference: writing the tables again would not make nft answer.
    throw new Error(`cannot list the ruleset: ${(err as Error).message}`);
  }
  const exists = (family: string, name: string) =>
    nftObjects<{ family: string; name: string }>(listing, 'table').some((t) => t.family === family && t.name === name);
  if (!exists('inet', TABLE)) return `table inet ${TABLE} is missing`;
  if (!exists('bridge', GUARD_TABLE)) return `table bridge ${GUARD_TABLE} is missing`;
  // Every rule of ours carries a comment: a rule flushed, added or edited away shows in the count.
  const have = (family: string, name: string) =>
    nftObjects<{ comment?: string }>(listing, 'rule', family, name).filter((r) => r.comment).length;
  const want = (text: string) => (text.match(/comment "[^"]+"/g) ?? []).length;
  if (s.policy && !exists('inet', REVOKED_TABLE)) return `table inet ${REVOKED_TABLE} is missing`;
  const [haveInet, wantInet] = [have('inet', TABLE) + have('inet', REVOKED_TABLE), want(ruleset(s))];
  if (haveInet !== wantInet)
    return `tables inet ${TABLE} and ${REVOKED_TABLE} have ${haveInet} of weft's rules where ${wantInet} belong`;
  const [haveBridge, wantBridge] = [have('bridge', GUARD_TABLE), want(guard)];
  if (haveBridge !== wantBridge)
    return `table bridge ${GUARD_TABLE} has ${haveBridge} of weft's rules where ${wantBridge} belong`;
  // A FORWARD chain that appeared later (Docker started after weft) needs our accept rule too.
  for (const family of FORWARD_FAMILIES) {
    const missing = await forwardAcceptMissing(family);
    // Not a difference (writing our tables again would not help): the check fails, says why, and
    // looks again in 5 s.
    if (missing === null) throw new Error(`cannot list the host's ${family} filter FORWARD chain`);
    if (missing) return `the host's ${family} filter FORWARD chain lacks weft's accept rule`;
  }
  return null;
}

/** Docker's FORWARD chains: IPv4's, and IPv6's (bridged IPv6 meets it with --ipv6). */
const FORWARD_FAMILIES = ['ip', 'ip6'] as const;

/**
 * With a host FORWARD chain (iptables-nft, e.g. Docker's, policy DROP), bridge traffic needs its own
 * accept there: true when that chain exists without it; null when nft could not say (it failed
 * otherwise than for a missing chain).
 */
async function forwardAcceptMissing(family: 'ip' | 'ip6'): Promise<boolean | null> {
  let listing: NftJson;
  try {
    listing = await nftSession.list(`list chain ${family} filter FORWARD`);
  } catch (err) {
    // No such chain: nothing can drop our traffic there.
    return /No such file or directory/.test((err as Error).message) ? false : null;
  }
  return !nftObjects<{ comment?: string }>(listing, 'rule').some((r) => r.comment === 'weft-bridge');
}

async function ensureForwardAccept(): Promise<void> {
  for (const family of FORWARD_FAMILIES) if (await forwardAcceptMissing(family)) await insertForwardAccept(family);
}

async function insertForwardAccept(family: 'ip' | 'ip6'): Promise<void> {
  await nft([
    'insert',
    'rule',
    family,
    'filter',
    'FORWARD',
    'iifname',
    BRIDGE,
    'oifname',
    BRIDGE,
    'counter',
    'accept',
    'comment',
    '"weft-bridge"',
  ]);
}

export async function removeFirewall(): Promise<void> {
  await nft(['delete', 'table', 'inet', TABLE]).catch(() => undefined);
  await nft(['delete', 'table', 'inet', REVOKED_TABLE]).catch(() => undefined);
  for (const family of FORWARD_FAMILIES)
    try {
      const chain = await nft(['-a', 'list', 'chain', family, 'filter', 'FORWARD']);
      for (const m of chain.matchAll(/weft-bridge.*# handle (\d+)/g))
        await nft(['delete', 'rule', family, 'filter', 'FORWARD', 'handle', m[1]]);
    } catch {
      /* no FORWARD chain */
    }
}
