// The `weft` Linux bridge: containers, the DNS address, the host and every
// backend's port (datapath/backend.ts) are on it. Made at start, checked and
// repaired when changed underneath, removed by reset.
import { readFileSync, readlinkSync, existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { ip, ipBatchIn, ipJson, linkExists } from '../net/command.js';
import { readLink, type LinkState } from './link-netlink.js';

export const BRIDGE = 'weft';
/** The VXLAN network id weft uses on the wire (the kernel device's and OVS's). */
export const VNI = 0x7765; // "we"
/** IPv4 + UDP + VXLAN + inner Ethernet headers. */
export const VXLAN_OVERHEAD = 50;
/** The same over an IPv6 underlay (its header is 20 bytes longer). */
export const VXLAN_OVERHEAD6 = 70;

export interface LinkInfo {
  ifname: string;
  mtu: number;
  address?: string;
  operstate?: string;
  master?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: { id?: number; port?: number } };
}

/** The smallest MTU of the host's non-loopback, non-weft links: the underlay the overlay rides on. */
export async function underlayMtu(): Promise<number> {
  const links = await ipJson<LinkInfo[]>(['-d', 'link', 'show']);
  const mtus = links
    .filter(
      (l) =>
        l.ifname !== 'lo' &&
        !l.ifname.startsWith(BRIDGE) &&
        !l.ifname.startsWith('vxlan-weft') &&
        !l.ifname.startsWith('vw') &&
        l.flags?.includes('UP') &&
        l.linkinfo?.info_kind !== 'bridge',
    )
    .map((l) => l.mtu);
  return mtus.length > 0 ? Math.min(...mtus) : 1500;
}

/**
 * A link of this network namespace as the kernel describes it, or null when there is none (or the
 * kernel cannot say): over rtnetlink by the addon (link-netlink.ts), from /sys/class/net without it
 * or if that fails. No process: the datapath's checks read this and run `ip` only when something is not as
 * it should be, where the `ip` check (authoritative) decides. The router's sysfs is its namespace's
 * (`ip netns exec` and containers mount their own; the attach path relies on it too).
 */
export function linkState(dev: string): LinkState | null {
  if (!/^[\w.-]{1,15}$/.test(dev)) return null;
  try {
    const link = readLink(dev);
    if (link !== undefined) return link;
  } catch {
    /* sysfs, then */
  }
  return sysfsLinkState(dev);
}

/**
 * Whether a link is there: the kernel's word over rtnetlink (the addon; an `ip` process was some
 * milliseconds of every start, for each device the router makes), else `ip`.
 */
export async function linkPresent(dev: string): Promise<boolean> {
  try {
    const link = readLink(dev);
    if (link !== undefined) return link !== null;
  } catch {
    /* `ip`, then */
  }
  return linkExists(dev);
}

/** A link as /sys/class/net shows it (linkState without the addon); null when there is none. */
export function sysfsLinkState(dev: string): LinkState | null {
  if (!/^[\w.-]{1,15}$/.test(dev)) return null;
  const dir = `/sys/class/net/${dev}`;
  const read = (f: string) => readFileSync(`${dir}/${f}`, 'utf8').trim();
  try {
    let master: string | null = null;
    try {
      master = basename(readlinkSync(`${dir}/master`));
    } catch {
      /* not enslaved */
    }
    const port = existsSync(`${dir}/brport`)
      ? {
          learning: read('brport/learning') === '1',
          neighSuppress: read('brport/neigh_suppress') === '1',
          isolated: read('brport/isolated') === '1',
        }
      : null;
    return {
      ifindex: Number(read('ifindex')),
      mtu: Number(read('mtu')),
      address: read('address').toLowerCase(),
      up: (Number.parseInt(read('flags'), 16) & 1) === 1,
      isBridge: existsSync(`${dir}/bridge`),
      master,
      port,
    };
  } catch {
    return null;
  }
}

/** Makes sure the bridge exists, up, with our MAC and MTU; returns what it had to fix. */
export async function ensureBridge(c: { mac: string; mtu: number; ipv6?: boolean }): Promise<string[]> {
  const ipv6 = c.ipv6 ?? false;
  const now = linkState(BRIDGE);
  if (now?.isBridge && now.up && now.mtu === c.mtu && now.address === c.mac.toLowerCase() && !bridgeIpv6Differs(ipv6))
    return [];
  if (!now && !(await linkPresent(BRIDGE))) {
    await ipBatchIn(undefined, [`link add ${BRIDGE} address ${c.mac} mtu ${c.mtu} type bridge`]);
    await setBridgeIpv6(ipv6); // before it is up, so it never gets a link-local address
    await ipBatchIn(undefined, [`link set ${BRIDGE} up`]);
    return ['created bridge'];
  }
  const br = (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', BRIDGE]))[0];
  if (br.linkinfo?.info_kind !== 'bridge')
    throw new Error(`a link called ${BRIDGE} exists and is not a bridge; remove it or run weft reset`);
  const fixes: [boolean, string, string][] = [
    [br.address !== c.mac, `link set ${BRIDGE} address ${c.mac}`, 'bridge MAC'],
    [br.mtu !== c.mtu, `link set ${BRIDGE} mtu ${c.mtu}`, 'bridge MTU'],
    [!br.flags?.includes('UP'), `link set ${BRIDGE} up`, 'bridge was down'],
  ];
  const due = fixes.filter(([differs]) => differs);
  const v6 = bridgeIpv6Differs(ipv6) && (await setBridgeIpv6(ipv6));
  await ipBatchIn(
    undefined,
    due.map(([, line]) => line),
  );
  return [...due.map(([, , what]) => what), ...(v6 ? [ipv6 ? 'bridge IPv6 settings' : 'bridge had IPv6'] : [])];
}

// Without --ipv6 the overlay carries IPv4 only (the ports drop everything else): the bridge has no
// IPv6 of its own either, so no host sends its link-local neighbour, router and multicast-listener
// traffic over the overlay, and nothing routes IPv6 into it. With --ipv6 the bridge needs IPv6 on for
// its neighbour table (neigh_suppress answers Neighbour Solicitations from it, as ARP from the IPv4
// one), still without a link-local address (addr_gen_mode 1) and deaf to router advertisements; its
// only IPv6 addresses are those `weft expose` gives it. A kernel without IPv6 has no such files: nothing to do.
const bridgeSysctl = (name: string) => `/proc/sys/net/ipv6/conf/${BRIDGE}/${name}`;

function readSysctl(name: string): string | null {
  try {
    return readFileSync(bridgeSysctl(name), 'utf8').trim();
  } catch {
    return null;
  }
}

/** The IPv6 settings the bridge should have, in the order they are written (addr_gen_mode before IPv6 goes on). */
function bridgeIpv6Settings(ipv6: boolean): [string, string][] {
  return ipv6
    ? [
        ['addr_gen_mode', '1'],
        ['accept_ra', '0'],
        ['disable_ipv6', '0'],
      ]
    : [['disable_ipv6', '1']];
}

/** Whether the bridge's IPv6 is not as it should be (a link-local address of its own included). */
function bridgeIpv6Differs(ipv6: boolean): boolean {
  if (readSysctl('disable_ipv6') === null) return false;
  if (bridgeIpv6Settings(ipv6).some(([k, v]) => readSysctl(k) !== v)) return true;
  return ipv6 && bridgeHasLinkLocal();
}

/** Whether the bridge has a link-local address (/proc/net/if_inet6: scope 20 is link). */
function bridgeHasLinkLocal(): boolean {
  try {
    return readFileSync('/proc/net/if_inet6', 'utf8')
      .split('\n')
      .some((l) => {
        const f = l.trim().split(/\s+/);
        return f[5] === BRIDGE && f[3] === '20';
      });
  } catch {
    return false;
  }
}

/**
 * True when the settings were written. A read-only /proc/sys is no reason to leave the bridge down:
 * without --ipv6, IPv6 is dropped at every port anyway (with it, neighbour suppression for IPv6 waits).
 */
async function setBridgeIpv6(ipv6: boolean): Promise<boolean> {
  try {
    for (const [k, v] of bridgeIpv6Settings(ipv6)) await writeFile(bridgeSysctl(k), v);
    if (ipv6 && bridgeHasLinkLocal()) await ip(['-6', 'addr', 'flush', 'dev', BRIDGE, 'scope', 'link']);
    return true;
  } catch {
    return false;
  }
}

/**
 * A backend's port on the bridge, set the way every backend's is: on the bridge, up, not learning
 * (the entries for remote MACs are ours), ARP for addresses the bridge has neighbour entries for
 * answered locally (neigh_suppress), and isolated from the other backends' ports (what came in over
 * one overlay never leaves over another, so nothing loops). `what` names it in the list of repairs.
 */
export async function ensurePort(dev: string, what: string, up: string[] = [dev]): Promise<string[]> {
  const now = linkState(dev);
  if (
    now?.master === BRIDGE &&
    now.port &&
    !now.port.learning &&
    now.port.neighSuppress &&
    now.port.isolated &&
    // The port itself was just read: only other devices are read again.
    up.every((d) => (d === dev ? now : linkState(d))?.up)
  )
    return [];
  // One `ip` process: onto the bridge, the port's flags (set whenever anything was off), up.
  if (!now) throw new Error(`${what} ${dev} does not exist`);
  const fixed: string[] = [];
  const lines: string[] = [];
  if (now.master !== BRIDGE) {
    lines.push(`link set ${dev} master ${BRIDGE}`);
    fixed.push(`${what} on the bridge`);
  }
  lines.push(`link set dev ${dev} type bridge_slave learning off neigh_suppress on isolated on`);
  for (const d of up)
    if (!linkState(d)?.up) {
      lines.push(`link set ${d} up`);
      fixed.push(`${d} was down`);
    }
  await ipBatchIn(undefined, lines);
  return fixed;
}

export async function removeBridge(): Promise<void> {
  if (await linkExists(BRIDGE)) await ip(['link', 'del', BRIDGE]);
}

/** A locally administered unicast MAC from the peer name (the name is MAC-shaped already). */
export function bridgeMac(peerName: string): string {
  const b = peerName.split(':').map((x) => parseInt(x, 16));
  b[0] = (b[0] & 0xfe) | 0x02;
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}
