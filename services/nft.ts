// The translation inside each client container's network namespace: a table of
// its own there, `ip weft_services`, written whole in one `nft -f` transaction.
// Its output NAT chain sends a new flow to a VIP to one backend (numgen: round
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
}

const HASH_SEED = '0x77656674'; // "weft": a fixed seed, so every client host hashes a client alike

export function compileServiceTable(serviceRange: string, vips: ServedVip[]): string {
  // With no service in the mesh there is nothing to translate or refuse, and no table: a table with a
  // NAT chain turns on conntrack for all of the container's traffic.
  if (vips.length === 0) return [`table ip ${SERVICES_TABLE}`, `delete table ip ${SERVICES_TABLE}`, ''].join('\n');
  const rules: string[] = [];
  for (const v of [...vips].sort((a, b) => (a.vip < b.vip ? -1 : 1))) {
    if (v.backends.length === 0) continue; // refused below
    const map = `map { ${v.backends.map((b, i) => `${i} : ${b}`).join(', ')} }`;
    const pick =
      v.affinity === 'client'
        ? `jhash ip saddr mod ${v.backends.length} seed ${HASH_SEED}`
        : `numgen inc mod ${v.backends.length}`;
    rules.push(`    ip daddr ${v.vip} counter dnat to ${pick} ${map} comment "service:${v.name}"`);
  }
  return [
    `table ip ${SERVICES_TABLE}`,
    `delete table ip ${SERVICES_TABLE}`,
    `table ip ${SERVICES_TABLE} {`,
    `  chain vips {`,
    `    type nat hook output priority -100; policy accept;`,
    ...rules,
    `  }`,
    `  chain refuse {`,
    `    type filter hook output priority filter; policy accept;`,
    `    ip daddr ${serviceRange} meta l4proto tcp counter reject with tcp reset comment "no backend"`,
    `    ip daddr ${serviceRange} counter reject with icmp type host-unreachable comment "no backend"`,
    `  }`,
    `}`,
    '',
  ].join('\n');
}
