// The translation inside each client container's network namespace: a table of
// its own there, `ip weft_services`, written whole in one `nft -f` transaction.
// A dual-stack container (--ipv6) has an `ip6` table of the same name for
// the IPv6 VIPs. Its output NAT chain sends a new flow to a VIP to one backend (numgen: round
// robin; jhash of the client's address: client affinity); conntrack keeps the
// flow on that backend and turns the replies back. Every port passes unchanged.
// Anything else to the service range (a VIP without backends, an address no
// service has) is refused at once: TCP reset, ICMP unreachable otherwise.
// Translating in the client makes the packet leave the container already
// addressed to its backend, so the overlay (fastdp or sleeve) and the security
// groups on the hosts see an ordinary container-to-container flow.
export const SERVICES_TABLE = 'weft_services';

export interface ServedVip {
  name: string;
  vip: string;
  affinity: 'none' | 'client';
  /** Backend addresses, in a stable order. */
  backends: string[];
  /** With --ipv6: the service's IPv6 VIP and its backends' IPv6 addresses (a backend without one is left out). */
  vip6?: string;
  backends6?: string[];
}

const HASH_SEED = '0x77656674'; // "weft": a fixed seed, so every client host hashes a client alike

/** One family's table: `ip` with the IPv4 VIPs, or `ip6` with the IPv6 ones. */
function familyTable(
  family: 'ip' | 'ip6',
  serviceRange: string,
  vips: { name: string; vip: string; affinity: ServedVip['affinity']; backends: string[] }[],
): string[] {
  const rules: string[] = [];
  for (const v of [...vips].sort((a, b) => (a.vip < b.vip ? -1 : 1))) {
    if (v.backends.length === 0) continue; // refused below
    const map = `map { ${v.backends.map((b, i) => `${i} : ${b}`).join(', ')} }`;
    const pick =
      v.affinity === 'client'
        ? `jhash ${family} saddr mod ${v.backends.length} seed ${HASH_SEED}`
        : `numgen inc mod ${v.backends.length}`;
    rules.push(`    ${family} daddr ${v.vip} counter dnat to ${pick} ${map} comment "service:${v.name}"`);
  }
  const unreachable = family === 'ip' ? 'icmp type host-unreachable' : 'icmpv6 type addr-unreachable';
  return [
    `table ${family} ${SERVICES_TABLE}`,
    `delete table ${family} ${SERVICES_TABLE}`,
    `table ${family} ${SERVICES_TABLE} {`,
    `  chain vips {`,
    `    type nat hook output priority -100; policy accept;`,
    ...rules,
    `  }`,
    `  chain refuse {`,
    `    type filter hook output priority filter; policy accept;`,
    `    ${family} daddr ${serviceRange} meta l4proto tcp counter reject with tcp reset comment "no backend"`,
    `    ${family} daddr ${serviceRange} counter reject with ${unreachable} comment "no backend"`,
    `  }`,
    `}`,
  ];
}

const noTable = (family: 'ip' | 'ip6') => [
  `table ${family} ${SERVICES_TABLE}`,
  `delete table ${family} ${SERVICES_TABLE}`,
];

/**
 * The translation for one container. With `serviceRange6` (a dual-stack container, --ipv6), the IPv6
 * VIPs are translated too, in an `ip6` table of the same name; otherwise that table is removed.
 */
export function compileServiceTable(serviceRange: string, vips: ServedVip[], serviceRange6?: string): string {
  // With no service in the mesh there is nothing to translate or refuse, and no table: a table with a
  // NAT chain turns on conntrack for all of the container's traffic.
  if (vips.length === 0) return [...noTable('ip'), ...noTable('ip6'), ''].join('\n');
  const v6 =
    serviceRange6 === undefined
      ? noTable('ip6')
      : familyTable(
          'ip6',
          serviceRange6,
          vips
            .filter((v) => v.vip6 !== undefined)
            .map((v) => ({ name: v.name, vip: v.vip6!, affinity: v.affinity, backends: v.backends6 ?? [] })),
        );
  return [...familyTable('ip', serviceRange, vips), ...v6, ''].join('\n');
}
