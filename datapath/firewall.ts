// weft's firewall: one nftables table, `inet weft`, written whole in one atomic
// `nft -f` transaction from the current state, checked every few seconds and
// rewritten if flushed or changed. nftables is the project's one firewall.
//
// - forward: overlay traffic across the bridge is accepted (bridged IPv4 meets
//   the inet forward hook through br_netfilter); so is traffic between the
//   overlay and the host's other links for exposed subnets (replies by conntrack).
// - postrouting: exposed subnets are masqueraded when they leave by another link.
// A host firewall whose FORWARD policy is DROP (Docker sets one) would still drop
// bridged traffic, since every base chain must accept: for that case weft also
// inserts one accept rule for the bridge into `ip filter FORWARD` when that
// chain exists, and removes it again on reset.
import { BRIDGE } from './bridge.js';
import { nft } from './iproute.js';

export const TABLE = 'weft';

export interface FirewallState {
  /** Subnets exposed on this host ("ip/prefix" of the subnet). */
  exposed: string[];
  /** Security groups (policy/nft.ts): sets and chains, and the forward-chain lines that use them. */
  policy?: { lines: string[]; hooks: string[] };
}

export function ruleset(s: FirewallState): string {
  const exposed = s.exposed.length > 0 ? `{ ${s.exposed.join(', ')} }` : null;
  return [
    `table inet ${TABLE}`,
    `delete table inet ${TABLE}`,
    `table inet ${TABLE} {`,
    `  chain forward {`,
    `    type filter hook forward priority filter - 10; policy accept;`,
    ...(s.policy?.hooks ?? []),
    `    iifname "${BRIDGE}" oifname "${BRIDGE}" accept comment "overlay traffic across the bridge"`,
    ...(exposed
      ? [
          `    iifname "${BRIDGE}" ip saddr ${exposed} accept comment "exposed subnets out"`,
          `    oifname "${BRIDGE}" ip daddr ${exposed} ct state established,related accept comment "replies to exposed subnets"`,
        ]
      : []),
    `  }`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    ...(exposed ? [`    oifname != "${BRIDGE}" ip saddr ${exposed} ip daddr != ${exposed} masquerade comment "exposed subnets to the outside"`] : []),
    `  }`,
    ...(s.policy?.lines ?? []),
    `}`,
    '',
  ].join('\n');
}

/** Writes the whole table in one transaction. */
export async function applyFirewall(s: FirewallState): Promise<void> {
  await nft(['-f', '-'], ruleset(s));
  await ensureForwardAccept();
}

/** True when our table is there with the rules for this state (a flush or edit shows as a difference). */
export async function firewallIntact(s: FirewallState): Promise<boolean> {
  let have: string;
  try {
    have = await nft(['-t', 'list', 'table', 'inet', TABLE]); // -t: without set elements (thousands, with security groups)
  } catch {
    return false;
  }
  const rules = (have.match(/comment "[^"]+"/g) ?? []).length;
  const want = (ruleset(s).match(/comment "[^"]+"/g) ?? []).length;
  if (rules !== want) return false;
  // A FORWARD chain that appeared later (Docker started after weft) needs our accept rule too.
  return !(await forwardAcceptMissing());
}

/**
 * With a host FORWARD chain (iptables-nft, e.g. Docker's, policy DROP), bridge traffic needs its own
 * accept there: true when that chain exists without it.
 */
async function forwardAcceptMissing(): Promise<boolean> {
  try {
    return !(await nft(['list', 'chain', 'ip', 'filter', 'FORWARD'])).includes('weft-bridge');
  } catch {
    return false; // no such chain: nothing can drop our traffic there
  }
}

async function ensureForwardAccept(): Promise<void> {
  if (!(await forwardAcceptMissing())) return;
  await nft(['insert', 'rule', 'ip', 'filter', 'FORWARD', 'iifname', BRIDGE, 'oifname', BRIDGE, 'counter', 'accept', 'comment', '"weft-bridge"']);
}

export async function removeFirewall(): Promise<void> {
  await nft(['delete', 'table', 'inet', TABLE]).catch(() => undefined);
  try {
    const chain = await nft(['-a', 'list', 'chain', 'ip', 'filter', 'FORWARD']);
    for (const m of chain.matchAll(/weft-bridge.*# handle (\d+)/g)) await nft(['delete', 'rule', 'ip', 'filter', 'FORWARD', 'handle', m[1]]);
  } catch {
    /* no FORWARD chain */
  }
}
