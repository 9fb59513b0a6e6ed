// The policy model as nftables, for this host's containers: a named set of
// member addresses per group the rules mention (kept current by element
// updates), a chain per local container that some rule limits (allowed traffic
// returns, the rest is counted and dropped), and one `security_groups` chain that sends
// each limited container's traffic through its chains. It lives in weft's own
// table (datapath/firewall.ts writes the table whole, this text included).
// Traffic of containers no rule limits never meets conntrack matches. Both
// families: a group has a set of each (IPv6's only where the overlay carries
// it), and a container is limited by both of its addresses.
import { createHash } from 'node:crypto';
import { BRIDGE } from '../datapath/bridge.js';
import { REVOKED_TABLE } from '../datapath/firewall.js';
import { containerMatches, type Member, type PolicyModel } from './model.js';
import type { Rule } from './rules.js';

interface CounterMeaning {
  kind: 'rule' | 'deny';
  /** The rule id, or the container whose default deny this is. */
  id: string;
  direction: 'ingress' | 'egress';
  /** For a deny: the groups whose rules limit the container that way. */
  groups: string[];
}

export interface CompiledPolicy {
  /** Sets and chains, inside `table inet weft { ... }`. */
  lines: string[];
  /** Lines for the forward chain that send traffic through the policy (none when nothing here is limited). */
  hooks: string[];
  /**
   * The text of `table inet weft_revoked`, written after weft's table and never deleted by its
   * rewrites (its chains are flushed and written again, its sets keep what the kernel put in them).
   */
  revokedTable: string[];
  /** The text with set elements left out: rules are rewritten only when this changes. */
  skeleton: string;
  /** Set name -> member addresses. */
  sets: Map<string, string[]>;
  /** Rule comment -> what its counter counts. */
  counters: Map<string, CounterMeaning>;
}

const short = (s: string) => createHash('sha1').update(s).digest('hex').slice(0, 12);
export const setName = (group: string, v6 = false) => `${v6 ? 'g6' : 'g'}_${short(group)}`;

const isV6 = (a: string) => a.includes(':');

function protoMatch(r: Rule): string {
  if (r.proto === 'any') return '';
  // icmp means ping and its kin in either family: a rule's family is its peer's.
  const p = r.proto === 'icmp' ? 'meta l4proto { icmp, ipv6-icmp }' : `meta l4proto ${r.proto}`;
  if (!r.ports) return p;
  return `${p} th dport ${r.ports[0] === r.ports[1] ? r.ports[0] : `${r.ports[0]}-${r.ports[1]}`}`;
}

export interface CompileOptions {
  /** The overlay carries IPv6 here (--ipv6): the rules are written for both families. */
  ipv6?: boolean;
}

export function compilePolicy(model: PolicyModel, local: Member[], opts: CompileOptions = {}): CompiledPolicy {
  const ipv6 = opts.ipv6 ?? false;
  const sets = new Map<string, string[]>();
  const sets6 = new Set<string>();
  const counters = new Map<string, CounterMeaning>();
  const chains: string[] = [];
  const jumps: string[] = [];
  const list = (addrs: string[]) => `{ ${[...new Set(addrs)].sort().join(', ')} }`;
  for (const m of [...local].sort((a, b) => (a.container < b.container ? -1 : 1))) {
    const own4 = m.addrs.filter((a) => !isV6(a));
    const own6 = ipv6 ? m.addrs.filter(isV6) : [];
    if (own4.length + own6.length === 0) continue;
    for (const direction of ['egress', 'ingress'] as const) {
      const rules = model.rulesFor(m, direction);
      if (rules.length === 0) continue;
      const chain = `${direction === 'ingress' ? 'i' : 'e'}_${short(m.container)}`;
      const peerField = (v6: boolean) => `${v6 ? 'ip6' : 'ip'} ${direction === 'ingress' ? 'saddr' : 'daddr'}`;
      // Only a flow's first packet gets here: the forward chain accepts flows already judged first.
      const body: string[] = [];
      for (const r of rules) {
        // The peer's match, one per family it has addresses in ('' for any: both at once).
        const peers: string[] = [];
        if (r.peer.kind === 'group') {
          const addrs = [...(model.groupAddrs.get(r.peer.name) ?? [])];
          const name = setName(r.peer.name);
          sets.set(name, addrs.filter((a) => !isV6(a)).sort());
          peers.push(`${peerField(false)} @${name}`);
          if (ipv6) {
            const name6 = setName(r.peer.name, true);
            sets.set(name6, addrs.filter(isV6).sort());
            sets6.add(name6);
            peers.push(`${peerField(true)} @${name6}`);
          }
        } else if (r.peer.kind === 'container') {
          const id = r.peer.id;
          const them = model.members.filter((x) => containerMatches(id, x.container)).flatMap((x) => x.addrs);
          const them4 = them.filter((a) => !isV6(a));
          const them6 = ipv6 ? them.filter(isV6) : [];
          if (them4.length > 0) peers.push(`${peerField(false)} ${list(them4)}`);
          if (them6.length > 0) peers.push(`${peerField(true)} ${list(them6)}`);
          if (peers.length === 0) continue; // no such container now: the rule matches nothing
        } else if (r.peer.kind === 'cidr') {
          if (isV6(r.peer.cidr) && !ipv6) continue; // no IPv6 crosses this host's overlay
          peers.push(`${peerField(isV6(r.peer.cidr))} ${r.peer.cidr}`);
        } else peers.push('');
        const comment = `rule:${r.id}:${chain}`;
        counters.set(comment, { kind: 'rule', id: r.id, direction, groups: [] });
        for (const peer of peers)
          body.push(`    ${[peer, protoMatch(r), 'counter return', `comment "${comment}"`].filter(Boolean).join(' ')}`);
      }
      const deny = `deny:${chain}`;
      counters.set(deny, {
        kind: 'deny',
        id: m.container,
        direction,
        groups: [
          ...new Set(rules.filter((r) => r.target.kind === 'group').map((r) => (r.target as { name: string }).name)),
        ],
      });
      body.push(`    counter drop comment "${deny}"`);
      chains.push(`  chain ${chain} {`, ...body, '  }');
      const own = direction === 'ingress' ? 'daddr' : 'saddr';
      if (own4.length > 0) jumps.push(`    ip ${own} ${list(own4)} jump ${chain}`);
      if (own6.length > 0) jumps.push(`    ip6 ${own} ${list(own6)} jump ${chain}`);
    }
  }
  if (jumps.length === 0) return { lines: [], hooks: [], revokedTable: [], skeleton: '', sets, counters };
  const setDecl = (name: string, elements: string[] | null) =>
    `  set ${name} { type ${sets6.has(name) ? 'ipv6_addr' : 'ipv4_addr'};${elements && elements.length > 0 ? ` elements = { ${elements.join(', ')} }` : ''} }`;
  // Neighbour Discovery is how IPv6 finds a neighbour at all (ARP is not IP, and never meets these
  // rules): a limited container still answers and asks. The port guard checks what it may say.
  const nd = ipv6
    ? [
        `    oifname "${BRIDGE}" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept comment "neighbour discovery"`,
      ]
    : [];
  const policyChain = ['  chain security_groups {', ...nd, ...jumps, '  }'];
  const names = [...sets.keys()].sort();
  const revokedTable = revokedTableText(ipv6);
  const lines = [...names.map((n) => setDecl(n, sets.get(n)!)), ...policyChain, ...chains];
  const skeleton = [...names.map((n) => setDecl(n, null)), ...policyChain, ...chains, ...revokedTable].join('\n');
  // Packets of flows already judged (replies, related ICMP) are accepted at once, before any other
  // match: a flow's first packet alone meets the rules. (The ct match turns on connection tracking in
  // the host's namespace, which weft otherwise does not use; that tracking is most of what a policy
  // costs a flow, bench/README.md.) Then everything that crosses the bridge, or enters it from the
  // host's other links, meets the policy once.
  // Before that (in table weft_revoked, whose forward chain comes first), flows a change revoked
  // (policy/conntrack.ts) are dropped both ways, replies too.
  const hooks = [
    `    ct state established,related accept comment "flows already judged"`,
    `    iifname "${BRIDGE}" jump security_groups`,
    `    iifname != "${BRIDGE}" oifname "${BRIDGE}" jump security_groups`,
  ];
  return { lines, hooks, revokedTable, skeleton, sets, counters };
}

/**
 * The bit of the conntrack mark that says "revoked" (policy/conntrack.ts sets it), as nft and conntrack
 * write it. One bit, so that other users of the mark (a CONNMARK of another firewall) keep theirs.
 */
export const MARK_HEX = '0x100000';
/** The comments of the rules that drop revoked flows and their connections picked up again, whose counters status reads. */
export const REVOKED_COMMENT = 'flows revoked';
export const NO_PICKUP_COMMENT = 'revoked connection picked up mid-stream';
/**
 * How long a revoked TCP connection's addresses and ports are remembered after its last packet: its
 * ends retransmit for some 15 minutes, and keepalives come every 2 hours by Linux's defaults.
 */
const REVOKED_MEMORY = '1d';

const fourTuple = (v6: boolean, reverse: boolean) => {
  const ip = v6 ? 'ip6' : 'ip';
  return reverse
    ? `${ip} daddr . ${ip} saddr . tcp dport . tcp sport`
    : `${ip} saddr . ${ip} daddr . tcp sport . tcp dport`;
};
const revokedSet = (v6: boolean) => (v6 ? 'revoked6' : 'revoked4');

/**
 * Table weft_revoked: its forward chain runs before weft's (priority filter - 11), on the bridge's
 * traffic only (another firewall may use the same bit for flows of its own). The packets of flows
 * marked revoked are dropped, and a TCP connection's addresses and ports remembered from them.
 * Conntrack picks a TCP connection it does not track up mid-stream, as new in the direction of the
 * first packet it sees: a revoked connection whose tracking is gone (closed by a forged reset, timed
 * out) would start again so from the side the rules do not bind (a server limited on ingress may
 * send to anyone). So a packet of a remembered connection that is not a SYN alone, new to conntrack,
 * is dropped either way (and the memory kept fresh). The table outlives weft's rewrites: what is
 * remembered stays.
 */
function revokedTableText(ipv6: boolean): string[] {
  const families = ipv6 ? [false, true] : [false];
  const notSyn = 'tcp flags & (fin | syn | rst | ack) != syn';
  const t = `inet ${REVOKED_TABLE}`;
  return [
    `table ${t} {`,
    ...families.map(
      (v6) =>
        `  set ${revokedSet(v6)} { type ${v6 ? 'ipv6_addr . ipv6_addr' : 'ipv4_addr . ipv4_addr'} . inet_service . inet_service; flags dynamic, timeout; timeout ${REVOKED_MEMORY}; }`,
    ),
    '  chain forward { type filter hook forward priority filter - 11; policy accept; }',
    '  chain revoked { }',
    '}',
    `flush chain ${t} forward`,
    `flush chain ${t} revoked`,
    `table ${t} {`,
    '  chain revoked {',
    ...families.map(
      (v6) =>
        `    meta nfproto ${v6 ? 'ipv6' : 'ipv4'} meta l4proto tcp update @${revokedSet(v6)} { ${fourTuple(v6, false)} }`,
    ),
    `    counter drop comment "${REVOKED_COMMENT}"`,
    '  }',
    '  chain forward {',
    `    iifname != "${BRIDGE}" oifname != "${BRIDGE}" accept`,
    `    ct mark and ${MARK_HEX} == ${MARK_HEX} jump revoked`,
    ...families.flatMap((v6) =>
      [false, true].map(
        (reverse) =>
          `    ct state new ${notSyn} ${fourTuple(v6, reverse)} @${revokedSet(v6)} update @${revokedSet(v6)} { ${fourTuple(v6, reverse)} } counter drop comment "${NO_PICKUP_COMMENT}"`,
      ),
    ),
    '  }',
    '}',
  ];
}

/**
 * One nft transaction that forgets these TCP connections (allowed again) in table weft_revoked, both
 * ways: added first, so that deleting one the kernel no longer holds is no error.
 */
export function forgetRevoked(flows: { src: string; dst: string; sport: number; port: number }[]): string {
  const out: string[] = [];
  for (const f of flows) {
    const v6 = f.src.includes(':');
    const elements = `{ ${f.src} . ${f.dst} . ${f.sport} . ${f.port}, ${f.dst} . ${f.src} . ${f.port} . ${f.sport} }`;
    for (const verb of ['add', 'delete'])
      out.push(`${verb} element inet ${REVOKED_TABLE} ${revokedSet(v6)} ${elements}`);
  }
  return out.length > 0 ? out.join('\n') + '\n' : '';
}

/** One nft transaction that turns the sets from `have` into `want` (same set names). */
export function elementUpdates(table: string, have: Map<string, string[]>, want: Map<string, string[]>): string {
  const out: string[] = [];
  for (const [name, addrs] of want) {
    const before = new Set(have.get(name) ?? []);
    const now = new Set(addrs);
    const add = addrs.filter((a) => !before.has(a));
    const del = [...before].filter((a) => !now.has(a));
    if (add.length > 0) out.push(`add element inet ${table} ${name} { ${add.join(', ')} }`);
    if (del.length > 0) out.push(`delete element inet ${table} ${name} { ${del.join(', ')} }`);
  }
  return out.length > 0 ? out.join('\n') + '\n' : '';
}
