// Host plumbing: the `weft` bridge and the VXLAN device on it. Created at
// start, checked and repaired when changed underneath, removed by reset.
import { bridge, ip, ipJson, linkExists } from './iproute.js';

export const BRIDGE = 'weft';
export const VXLAN_DEV = 'vxlan-weft';
/** The VXLAN network id weft uses on the wire. */
export const VNI = 0x7765; // "we"
/** IPv4 + UDP + VXLAN + inner Ethernet headers. */
export const VXLAN_OVERHEAD = 50;

export interface BridgeConfig {
  mac: string;
  mtu: number;
  vxlanPort: number;
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
  if (vx.master !== BRIDGE) {
    await ip(['link', 'set', VXLAN_DEV, 'master', BRIDGE]);
    fixed.push('VXLAN device on the bridge');
  }
  // The bridge must not learn remote MACs on the VXLAN port either: the fdb entries are ours. With
  // neigh_suppress, ARP for addresses the bridge has neighbour entries for is answered locally.
  // Isolated, like the sleeve's TAP: what came in over one overlay never leaves over the other.
  await bridge(['link', 'set', 'dev', VXLAN_DEV, 'learning', 'off', 'neigh_suppress', 'on', 'isolated', 'on']);
  for (const dev of [VXLAN_DEV, BRIDGE]) {
    const st = (await ipJson<LinkInfo[]>(['link', 'show', 'dev', dev]))[0];
    if (!st.flags?.includes('UP')) {
      await ip(['link', 'set', dev, 'up']);
      if (fixed.length === 0) fixed.push(`${dev} was down`);
    }
  }
  return fixed;
}

export async function removeBridge(): Promise<void> {
  for (const dev of [VXLAN_DEV, BRIDGE]) if (await linkExists(dev)) await ip(['link', 'del', dev]);
}

/** A locally administered unicast MAC from the peer name (the name is MAC-shaped already). */
export function bridgeMac(peerName: string): string {
  const b = peerName.split(':').map((x) => parseInt(x, 16));
  b[0] = (b[0] & 0xfe) | 0x02;
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}
