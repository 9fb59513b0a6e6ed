// Host plumbing: the `weft` bridge and the VXLAN device on it. Created at
// start, checked and repaired when changed underneath, removed by reset.
import { bridge, ethtool, ip, ipJson, linkExists } from '../net/command.js';

export const BRIDGE = 'weft';
export const VXLAN_DEV = 'vxlan-weft';
/** The VXLAN network id weft uses on the wire. */
export const VNI = 0x7765; // "we"
/** IPv4 + UDP + VXLAN + inner Ethernet headers. */
export const VXLAN_OVERHEAD = 50;

/** The OVS datapath's veth pair: this end is a port of the Linux bridge, its peer a port of OVS's bridge. */
export const OVS_VETH_BRIDGE_END = 'weftovs-br';
export const OVS_VETH_OVS_END = 'weftovs-dp';

export interface BridgeConfig {
  mac: string;
  mtu: number;
  vxlanPort: number;
  /** The OVS datapath: no kernel VXLAN device; a veth pair to OVS's bridge takes its place on the bridge. */
  ovs?: boolean;
}

interface LinkInfo {
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
    .filter((l) => l.ifname !== 'lo' && !l.ifname.startsWith(BRIDGE) && l.ifname !== VXLAN_DEV && !l.ifname.startsWith('vw') && l.flags?.includes('UP') && l.linkinfo?.info_kind !== 'bridge')
    .map((l) => l.mtu);
  return mtus.length > 0 ? Math.min(...mtus) : 1500;
}

/** Makes sure the bridge and the VXLAN port exist with the right settings; returns what it had to fix. */
export async function ensureBridge(c: BridgeConfig): Promise<string[]> {
  const fixed: string[] = [];
  if (!(await linkExists(BRIDGE))) {
    await ip(['link', 'add', BRIDGE, 'type', 'bridge']);
    fixed.push('created bridge');
  }
  const br = (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', BRIDGE]))[0];
  if (br.linkinfo?.info_kind !== 'bridge') throw new Error(`a link called ${BRIDGE} exists and is not a bridge; remove it or run weft reset`);
  if (br.address !== c.mac) {
    await ip(['link', 'set', BRIDGE, 'address', c.mac]);
    fixed.push('bridge MAC');
  }
  if (br.mtu !== c.mtu) {
    await ip(['link', 'set', BRIDGE, 'mtu', String(c.mtu)]);
    fixed.push('bridge MTU');
  }
  const port = c.ovs ? await ensureOvsVeth(c, fixed) : await ensureVxlan(c, fixed);
  if (port.master !== BRIDGE) {
    await ip(['link', 'set', port.dev, 'master', BRIDGE]);
    fixed.push(`${port.what} on the bridge`);
  }
  // The bridge must not learn remote MACs on the tunnel port either: the fdb entries are ours. With
  // neigh_suppress, ARP for addresses the bridge has neighbour entries for is answered locally.
  // Isolated, like the sleeve's TAP: what came in over one overlay never leaves over the other.
  await bridge(['link', 'set', 'dev', port.dev, 'learning', 'off', 'neigh_suppress', 'on', 'isolated', 'on']);
  for (const dev of [...port.up, BRIDGE]) {
    const st = (await ipJson<LinkInfo[]>(['link', 'show', 'dev', dev]))[0];
    if (!st.flags?.includes('UP')) {
      await ip(['link', 'set', dev, 'up']);
      if (fixed.length === 0) fixed.push(`${dev} was down`);
    }
  }
  return fixed;
}

/** The bridge's tunnel port as made: the device on the bridge, its master now, and the links to bring up. */
interface TunnelPort {
  dev: string;
  /** What it is, for the list of repairs. */
  what: string;
  master?: string;
  up: string[];
}

/** The kernel VXLAN device, made again when its settings differ. */
async function ensureVxlan(c: BridgeConfig, fixed: string[]): Promise<TunnelPort> {
  let vx = (await linkExists(VXLAN_DEV)) ? (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', VXLAN_DEV]))[0] : null;
  if (vx && (vx.linkinfo?.info_kind !== 'vxlan' || vx.linkinfo.info_data?.id !== VNI || vx.linkinfo.info_data?.port !== c.vxlanPort)) {
    await ip(['link', 'del', VXLAN_DEV]);
    vx = null;
    fixed.push('replaced VXLAN device with other settings');
  }
  if (!vx) {
    // nolearning: the router programs every remote MAC; the kernel must not learn stale ones from floods.
    await ip(['link', 'add', VXLAN_DEV, 'type', 'vxlan', 'id', String(VNI), 'dstport', String(c.vxlanPort), 'nolearning']);
    fixed.push('created VXLAN device');
    vx = (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', VXLAN_DEV]))[0];
  }
  if (vx.mtu !== c.mtu) await ip(['link', 'set', VXLAN_DEV, 'mtu', String(c.mtu)]);
  return { dev: VXLAN_DEV, what: 'VXLAN device', master: vx.master, up: [VXLAN_DEV] };
}

/**
 * The OVS datapath's tunnel port: the veth pair to OVS in the VXLAN device's place, with the same
 * port flags. Offloads are off on both ends: OVS's userspace datapath reads frames from the veth
 * as they are, and segmentation-offloaded TCP frames larger than the MTU would be lost on the way
 * (../shared/reference/measurements.md, "Open vSwitch works here in userspace").
 */
async function ensureOvsVeth(c: BridgeConfig, fixed: string[]): Promise<TunnelPort> {
  if (await linkExists(VXLAN_DEV)) {
    await ip(['link', 'del', VXLAN_DEV]);
    fixed.push('removed the VXLAN device (the OVS datapath replaces it)');
  }
  if (!(await linkExists(OVS_VETH_BRIDGE_END))) {
    if (await linkExists(OVS_VETH_OVS_END)) await ip(['link', 'del', OVS_VETH_OVS_END]);
    await ip(['link', 'add', OVS_VETH_BRIDGE_END, 'mtu', String(c.mtu), 'type', 'veth', 'peer', 'name', OVS_VETH_OVS_END, 'mtu', String(c.mtu)]);
    for (const dev of [OVS_VETH_BRIDGE_END, OVS_VETH_OVS_END]) await ethtool(['-K', dev, 'tso', 'off', 'gso', 'off', 'gro', 'off', 'tx', 'off']);
    fixed.push('created the veth pair to OVS');
  }
  const end = (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', OVS_VETH_BRIDGE_END]))[0];
  if (end.mtu !== c.mtu) for (const dev of [OVS_VETH_BRIDGE_END, OVS_VETH_OVS_END]) await ip(['link', 'set', dev, 'mtu', String(c.mtu)]);
  return { dev: OVS_VETH_BRIDGE_END, what: 'OVS veth', master: end.master, up: [OVS_VETH_BRIDGE_END, OVS_VETH_OVS_END] };
}

export async function removeBridge(): Promise<void> {
  for (const dev of [VXLAN_DEV, OVS_VETH_BRIDGE_END, BRIDGE]) if (await linkExists(dev)) await ip(['link', 'del', dev]);
}

/** A locally administered unicast MAC from the peer name (the name is MAC-shaped already). */
export function bridgeMac(peerName: string): string {
  const b = peerName.split(':').map((x) => parseInt(x, 16));
  b[0] = (b[0] & 0xfe) | 0x02;
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}
