// Every container port on the bridge is bound to its container's MAC and
// addresses, so no container speaks as another: a frame with another source
// MAC, an IPv4 or IPv6 packet with another source address, an ARP message with
// another sender, a Neighbour Advertisement for another's address, a router
// advertisement or redirect, and anything that is neither IPv4, IPv6 nor ARP
// (VLAN tags ...) is dropped where it enters the bridge. A port without IPv6
// addresses sends no IPv6 at all. So is anything but IPv4 and ARP (and IPv6
// when the overlay carries it) from the overlay's ports: only a peer or a
// spoofer sends those. Security groups match addresses, so they hold only
// because of this. It is a table of the bridge family, `bridge weft`,
// stateless (no conntrack): a map from port name to that port's chain; a port
// of weft's whose binding is not written yet drops everything, so a container
// is bound before its first frame. The datapath's other ports (VXLAN, sleeve,
// OVS) carry frames from peers and are not bound here.
import { nft } from '../net/command.js';
import { nftScript } from '../net/nft-session.js';
import { ip6Hex, linkLocalOf } from '../net/addr6.js';

export const GUARD_TABLE = 'weft';
/** Host ends of container veths (datapath/attach.ts hostIfName): what the catch-all drop matches. */
const CONTAINER_PORT_PREFIX = 'vw';

export interface PortBinding {
  /** The host end of the container's veth, a port of the bridge. */
  port: string;
  mac: string;
  /** IPv4 addresses the container may send from. */
  addrs: string[];
  /** IPv6 addresses it may send from (with them, its link-local address from the MAC too); none: no IPv6. */
  addrs6?: string[];
  /**
   * Security groups limit what the container accepts: it receives only IP packets addressed to it
   * (and Neighbour Discovery), no broadcast or multicast, which no rule can name and whose
   * destination is not the container's, so the rules never judge them.
   */
  limitedIn?: boolean;
}

/** How the whole table is written. */
export interface GuardOptions {
  /** The overlay carries IPv6 (--ipv6): the overlay's ports may bring it. */
  overlayIpv6?: boolean;
  /** IPv6 subnets the host is exposed to (weft expose): their containers' IPv6 may reach the host. */
  exposed6?: () => string[];
  /** The DNS server's IPv6 address on the bridge: every container's IPv6 may reach it, on port 53. */
  dns6?: string;
  /** The host's own IPv6 addresses on the bridge (exposed ones, the DNS server's): Neighbour Discovery may reach them. */
  hostAddrs6?: () => string[];
  /** The overlay's IPv6 range: exposed subnets may not be routed by the host into the rest of it. */
  allocRange6?: string;
}

const chainOf = (port: string) => `p_${port}`;
const outChainOf = (port: string) => `o_${port}`;

/** A MAC as one 48-bit hex number, for raw payload matches. */
const macHex = (mac: string) => `0x${mac.replaceAll(':', '')}`;

/** The port's IPv6 addresses: the ones it was given and, with any, its link-local one. */
function ipv6Of(b: PortBinding): string[] {
  const given = b.addrs6 ?? [];
  return given.length > 0 ? [...new Set([...given, linkLocalOf(b.mac)])].sort() : [];
}

function portRules(b: PortBinding): string[] {
  const addrs = [...new Set(b.addrs)].sort();
  const any = addrs.length > 0 ? `{ ${addrs.join(', ')} }` : null;
  const v6 = ipv6Of(b);
  const any6 = v6.length > 0 ? `{ ${v6.join(', ')} }` : null;
  // Neighbour Discovery is ICMPv6 at fixed offsets: an advertisement's target address at byte 8 of
  // the ICMPv6 header, and a single link-layer address option (type 1 in a solicitation, 2 in an
  // advertisement, length 1) at byte 24 with the MAC at byte 26. (Options in another order are
  // possible but nothing sends them; the source address check above holds regardless.)
  const ipv6 = any6
    ? [
        `ether type ip6 ip6 saddr != ${any6} counter drop comment "spoofed IPv6 source"`,
        `icmpv6 type { nd-router-advert, nd-redirect, router-renumbering, mld-listener-query } counter drop comment "router advertisement, redirect or multicast query from a container"`,
        // What the kernel sends: the target, and at most one link-layer address option. Anything
        // longer (options in another order, extension headers) could hide another MAC from the
        // checks below, or carry data past the security groups (which let all of ND pass).
        `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 length != { 24, 32 } counter drop comment "neighbour discovery of another shape"`,
        `icmpv6 type nd-neighbor-solicit ip6 length 32 @th,192,16 != 0x0101 counter drop comment "neighbour discovery of another shape"`,
        `icmpv6 type nd-neighbor-advert ip6 length 32 @th,192,16 != 0x0201 counter drop comment "neighbour discovery of another shape"`,
        `icmpv6 type nd-neighbor-advert @th,64,128 != { ${v6.map(ip6Hex).join(', ')} } counter drop comment "neighbour advertisement for another's address"`,
        `icmpv6 type nd-neighbor-advert @th,192,16 0x0201 @th,208,48 != ${macHex(b.mac)} counter drop comment "neighbour advertisement with another's MAC"`,
        `icmpv6 type nd-neighbor-solicit @th,192,16 0x0101 @th,208,48 != ${macHex(b.mac)} counter drop comment "neighbour solicitation with another's MAC"`,
      ]
    : [`ether type ip6 counter drop comment "no IPv6 address"`];
  return [
    // What a container sends almost always: its own IPv4 (or IPv6 other than ICMPv6, whose Neighbour
    // Discovery is checked below), from its own MAC, accepted by one rule. The rest below says, and
    // counts, why a frame is dropped.
    ...(any ? [`ether saddr ${b.mac} ip saddr ${any} accept`] : []),
    ...(any6 ? [`ether saddr ${b.mac} ip6 saddr ${any6} meta l4proto { tcp, udp } accept`] : []),
    `ether saddr != ${b.mac} counter drop comment "spoofed source MAC"`,
    `ether type arp arp saddr ether != ${b.mac} counter drop comment "spoofed ARP sender MAC"`,
    any
      ? `ether type arp arp saddr ip != ${any} counter drop comment "spoofed ARP sender address"`
      : `ether type arp counter drop comment "no address to speak ARP for"`,
    any
      ? `ether type ip ip saddr != ${any} counter drop comment "spoofed IPv4 source"`
      : `ether type ip counter drop comment "no IPv4 address"`,
    ...ipv6,
    `ether type { ip, arp, ip6 } accept`,
    `counter drop comment "neither IPv4, IPv6 nor ARP (VLAN tags included)"`,
  ];
}

/** What a port limited on ingress may be sent (on the bridge's forward hook, to that port). */
function outRules(b: PortBinding): string[] {
  const v4 = [...new Set(b.addrs)].sort();
  const v6 = ipv6Of(b);
  const notMine = 'counter drop comment "not addressed to a container limited on ingress"';
  return [
    ...(v6.length > 0 ? [`ether type ip6 ip6 daddr { ${v6.join(', ')} } accept`] : []),
    `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept`,
    `ether type ip6 ${notMine}`,
    v4.length > 0 ? `ether type ip ip daddr != { ${v4.join(', ')} } ${notMine}` : `ether type ip ${notMine}`,
  ];
}

/** The whole table, written at start and whenever it was changed underneath. */
export function guardRuleset(bindings: PortBinding[], opts: GuardOptions = {}): string {
  const { overlayIpv6 = false } = opts;
  const exposed6 = opts.exposed6?.() ?? [];
  const hostAddrs6 = opts.hostAddrs6?.() ?? [];
  const set = (xs: string[]) => `{ ${xs.join(', ')} }`;
  const sorted = [...bindings].sort((a, b) => (a.port < b.port ? -1 : 1));
  const elements = sorted.map((b) => `"${b.port}" : jump ${chainOf(b.port)}`);
  const limited = sorted.filter((b) => b.limitedIn);
  const outElements = limited.map((b) => `"${b.port}" : jump ${outChainOf(b.port)}`);
  return [
    `table bridge ${GUARD_TABLE}`,
    `delete table bridge ${GUARD_TABLE}`,
    `table bridge ${GUARD_TABLE} {`,
    `  map ports {`,
    `    type ifname : verdict;`,
    ...(elements.length > 0 ? [`    elements = { ${elements.join(', ')} }`] : []),
    `  }`,
    `  map out_ports {`,
    `    type ifname : verdict;`,
    ...(outElements.length > 0 ? [`    elements = { ${outElements.join(', ')} }`] : []),
    `  }`,
    ...sorted.flatMap((b) => [`  chain ${chainOf(b.port)} {`, ...portRules(b).map((r) => `    ${r}`), `  }`]),
    ...limited.flatMap((b) => [`  chain ${outChainOf(b.port)} {`, ...outRules(b).map((r) => `    ${r}`), `  }`]),
    // Frames to limited ports: bridged ones, and the host's own (the DNS server's replies are addressed
    // to the container, and pass).
    `  chain forward {`,
    `    type filter hook forward priority filter; policy accept;`,
    `    oifname vmap @out_ports`,
    `  }`,
    `  chain output {`,
    `    type filter hook output priority filter; policy accept;`,
    `    oifname vmap @out_ports`,
    `  }`,
    // IPv6 to a MAC of the host, from any port (a local container's, or the overlay's: a remote
    // container can address this host's bridge MAC too): the host speaks IPv6 there only as the DNS
    // server and where it is exposed, and anything else would be routed on by a host that forwards
    // IPv6, past every rule. An exposed subnet may go out, or to the exposed subnets, not into the rest
    // of the overlay's range (another subnet's containers). (Local ports' sources are bound already.)
    `  chain input {`,
    `    type filter hook input priority filter; policy accept;`,
    ...(exposed6.length > 0
      ? [
          ...(opts.allocRange6
            ? [
                `    ether type ip6 ip6 saddr ${set(exposed6)} ip6 daddr != ${opts.allocRange6} accept comment "IPv6 from exposed subnets, out of the overlay"`,
              ]
            : []),
          `    ether type ip6 ip6 saddr ${set(exposed6)} ip6 daddr ${set(exposed6)} accept comment "IPv6 from exposed subnets to exposed subnets"`,
        ]
      : []),
    ...(opts.dns6 && overlayIpv6
      ? [
          `    ip6 daddr ${opts.dns6} meta l4proto { udp, tcp } th dport 53 accept comment "the DNS server over IPv6"`,
          // Every host has that address: a remote container asking for its MAC is not this host's to answer.
          `    iifname != "${CONTAINER_PORT_PREFIX}*" icmpv6 type nd-neighbor-solicit @th,64,128 ${ip6Hex(opts.dns6)} counter drop comment "neighbour solicitation for the DNS server from the overlay"`,
        ]
      : []),
    // The host resolving a container it answers, and containers resolving the host: only to the host's
    // own addresses and solicited-node multicast (ND to anywhere else would be routed on).
    ...(hostAddrs6.length > 0 && overlayIpv6
      ? [
          `    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 ip6 daddr ${set(['ff02::1:ff00:0/104', ...hostAddrs6])} accept comment "neighbour discovery with the host"`,
        ]
      : []),
    `    ether type ip6 counter drop comment "IPv6 to the host"`,
    `  }`,
    `  chain prerouting {`,
    `    type filter hook prerouting priority filter; policy accept;`,
    `    iifname vmap @ports`,
    // The overlay's own ports (a peer's VXLAN or sleeve, OVS) carry what containers send, which their
    // ports let through only as IPv4, ARP and (with --ipv6) IPv6: anything else (a VLAN tag, behind
    // which a frame would pass br_netfilter and so the security groups unchecked) came from no
    // container of ours.
    overlayIpv6
      ? `    ether type != { ip, arp, ip6 } counter drop comment "neither IPv4, IPv6 nor ARP from the overlay (VLAN tags included)"`
      : `    ether type != { ip, arp } counter drop comment "neither IPv4 nor ARP from the overlay (IPv6 and VLAN tags included)"`,
    `    iifname "${CONTAINER_PORT_PREFIX}*" counter drop comment "container port not bound yet"`,
    `  }`,
    `}`,
    '',
  ].join('\n');
}

/** One transaction that adds or rewrites `bind` and removes `unbind` (ports that are in the table now). */
function guardUpdates(bind: PortBinding[], unbind: string[]): string {
  const t = `bridge ${GUARD_TABLE}`;
  const out: string[] = [];
  // The out chain goes with its map element first (a chain a map points at cannot be deleted). Both
  // may be absent: `add` then `delete` removes them whatever was there.
  const dropOut = (port: string) => [
    `add element ${t} out_ports { "${port}" : jump ${outChainOf(port)} }`,
    `delete element ${t} out_ports { "${port}" }`,
  ];
  for (const port of unbind)
    out.push(
      `delete element ${t} ports { "${port}" }`,
      `delete chain ${t} ${chainOf(port)}`,
      `add chain ${t} ${outChainOf(port)}`,
      ...dropOut(port),
      `delete chain ${t} ${outChainOf(port)}`,
    );
  for (const b of bind) {
    const chain = chainOf(b.port);
    const outChain = outChainOf(b.port);
    out.push(
      `add chain ${t} ${chain}`,
      `flush chain ${t} ${chain}`,
      ...portRules(b).map((r) => `add rule ${t} ${chain} ${r}`),
      `add element ${t} ports { "${b.port}" : jump ${chain} }`,
      `add chain ${t} ${outChain}`,
      `flush chain ${t} ${outChain}`,
    );
    if (b.limitedIn)
      out.push(
        ...outRules(b).map((r) => `add rule ${t} ${outChain} ${r}`),
        `add element ${t} out_ports { "${b.port}" : jump ${outChain} }`,
      );
    else out.push(...dropOut(b.port), `delete chain ${t} ${outChain}`);
  }
  return out.length > 0 ? out.join('\n') + '\n' : '';
}

const keyOf = (b: PortBinding) =>
  `${b.mac} ${[...new Set(b.addrs)].sort().join(',')} ${ipv6Of(b).join(',')} ${b.limitedIn ? 'limited' : ''}`;

/** Keeps the table equal to the bindings it is given, by small updates; rewrites it whole when the kernel's differs. */
export class PortGuard {
  /** What the kernel has, as far as we know: port -> binding key. null: unknown (write whole). */
  private written: Map<string, string> | null = null;
  lastError: string | null = null;
  readonly stats = { updates: 0, rewrites: 0 };

  constructor(
    /** How the whole table is written (--ipv6, the bridge's MAC). */
    private readonly options: GuardOptions = {},
    /** Writes the whole table (at start, after a change underneath): `nft -f`, not the session, which reads wait behind. */
    private readonly run: (script: string) => Promise<unknown> = (script) => nft(['-f', '-'], script),
    /** Writes a few ports' updates (each attach and detach): through the long-lived nft. */
    private readonly update: (script: string) => Promise<unknown> = nftScript,
  ) {}

  /** Brings the table to exactly `bindings`. Throws when nftables refuses (the reason says why). */
  async sync(bindings: PortBinding[]): Promise<void> {
    const want = new Map(bindings.map((b) => [b.port, b]));
    try {
      if (this.written) {
        const unbind = [...this.written.keys()].filter((p) => !want.has(p));
        const bind = bindings.filter((b) => this.written!.get(b.port) !== keyOf(b));
        const text = guardUpdates(bind, unbind);
        if (!text) return;
        try {
          await this.update(text);
          for (const p of unbind) this.written.delete(p);
          for (const b of bind) this.written.set(b.port, keyOf(b));
          this.stats.updates++;
          this.lastError = null;
          return;
        } catch {
          // the kernel's table is not what we thought: write it whole below
        }
      }
      await this.run(guardRuleset(bindings, this.options));
      this.written = new Map(bindings.map((b) => [b.port, keyOf(b)]));
      this.stats.rewrites++;
      this.lastError = null;
    } catch (err) {
      this.written = null;
      this.lastError = `binding container ports to their addresses failed: ${(err as Error).message}`;
      throw new Error(this.lastError);
    }
  }

  /** Adds (or rewrites) one port's binding now: before the port joins the bridge. */
  async bind(b: PortBinding): Promise<void> {
    if (this.written?.get(b.port) === keyOf(b)) return;
    const text = guardUpdates([b], []);
    try {
      if (!this.written) throw new Error('table not written yet');
      await this.update(text);
      this.written.set(b.port, keyOf(b));
    } catch (err) {
      // No table yet (or not the one we thought): the next sync writes it whole; until then this port
      // stays unbound, which drops its frames, so attach reports the failure.
      this.written = null;
      throw new Error(
        `cannot bind port ${b.port} to ${b.mac} ${[...b.addrs, ...(b.addrs6 ?? [])].join(' ')}: the bridge guard table is not in place (${this.lastError ?? (err as Error).message})`,
      );
    }
  }

  /** Forgets what it wrote (the next sync writes the table whole). */
  invalidate(): void {
    this.written = null;
  }

  /** Removes the table (weft reset). */
  static async remove(): Promise<void> {
    await nft(['delete', 'table', 'bridge', GUARD_TABLE]).catch(() => undefined);
  }
}
