// fastdp: the kernel's VXLAN device, programmed from what the control plane
// knows. For every remote container MAC: a static fdb entry to its peer's
// underlay address (VXLAN's own table), and a bridge entry sending that MAC to
// the VXLAN port, so it is not flooded to local containers. An all-zeros flood
// entry per peer (broadcast, unknown unicast). A neighbour entry on the bridge
// for every remote container address: with neigh_suppress on the VXLAN port the
// bridge answers ARP itself, so ARP does not cross hosts. The kernel state is
// read back and only the difference applied, in one `bridge -batch` and one
// `ip -batch`, so nothing stale survives.
import { BRIDGE, VXLAN_DEV } from '../bridge.js';
import { bridgeBatch, bridgeJson, ipBatch, ipJson } from '../../net/command.js';

export const FLOOD_MAC = '00:00:00:00:00:00';

export interface FdbEntry {
  mac: string;
  dst: string;
}

const key = (e: FdbEntry) => `${e.mac} ${e.dst}`;

export interface NeighEntry {
  ip: string;
  mac: string;
}

export async function readFdb(): Promise<FdbEntry[]> {
  const rows = await bridgeJson<{ mac: string; dst?: string; ifname?: string }[]>(['fdb', 'show', 'dev', VXLAN_DEV]);
  return rows.filter((r) => r.dst).map((r) => ({ mac: r.mac, dst: r.dst! }));
}

/** Bridge (master) entries we made on a port: static ones (the port's own MAC is permanent). */
async function readBridgeEntries(dev: string): Promise<string[]> {
  const rows = await bridgeJson<{ mac: string; dst?: string; master?: string; state?: string }[]>(['fdb', 'show', 'dev', dev]);
  return rows.filter((r) => !r.dst && r.master === BRIDGE && r.state === 'static').map((r) => r.mac);
}

/**
 * Brings the VXLAN and bridge fdb to exactly `desired` (plus a bridge entry per remote MAC), and
 * the bridge entries of the sleeve's port (`sleeve`, when it runs) to exactly `sleeveMacs`.
 */
export async function programFdb(
  desired: FdbEntry[],
  sleeve?: { dev: string; macs: string[] },
  /** The bridge port remote MACs go to: the VXLAN device (with its own fdb), or the OVS datapath's veth (flows do the rest). */
  tunnel: { dev: string; vxlan: boolean } = { dev: VXLAN_DEV, vxlan: true },
): Promise<{ added: number; removed: number }> {
  const current = tunnel.vxlan ? await readFdb() : [];
  const want = new Map((tunnel.vxlan ? desired : []).map((e) => [key(e), e]));
  const have = new Map(current.map((e) => [key(e), e]));
  const lines: string[] = [];
  let removed = 0;
  let added = 0;
  const wantBridge = new Set(desired.filter((e) => e.mac !== FLOOD_MAC).map((e) => e.mac));
  const haveBridge = new Set(await readBridgeEntries(tunnel.dev));
  const haveSleeve = new Set(sleeve ? await readBridgeEntries(sleeve.dev) : []);
  const wantSleeve = new Set(sleeve?.macs ?? []);
  // Deletions first: a MAC moving between overlays is removed from one port, then added on the other.
  for (const mac of haveBridge) if (!wantBridge.has(mac)) lines.push(`fdb del ${mac} dev ${tunnel.dev} master`);
  for (const mac of haveSleeve) if (!wantSleeve.has(mac)) lines.push(`fdb del ${mac} dev ${sleeve!.dev} master`);
  for (const mac of wantBridge) if (!haveBridge.has(mac)) lines.push(`fdb replace ${mac} dev ${tunnel.dev} master static`);
  for (const mac of wantSleeve) if (!haveSleeve.has(mac)) lines.push(`fdb replace ${mac} dev ${sleeve!.dev} master static`);
  for (const [k, e] of have) {
    if (want.has(k)) continue;
    lines.push(`fdb del ${e.mac} dev ${VXLAN_DEV} dst ${e.dst}`);
    removed++;
  }
  for (const [k, e] of want) {
    if (have.has(k)) continue;
    // Several flood destinations share the zero MAC: append; a container MAC lives at one peer: replace.
    lines.push(`fdb ${e.mac === FLOOD_MAC ? 'append' : 'replace'} ${e.mac} dev ${VXLAN_DEV} dst ${e.dst} self permanent`);
    added++;
  }
  await bridgeBatch(lines);
  return { added, removed };
}

/** Brings the bridge's permanent neighbour entries to exactly `desired`. */
export async function programNeighbours(desired: NeighEntry[]): Promise<void> {
  const have = await ipJson<{ dst: string; lladdr?: string }[]>(['neigh', 'show', 'dev', BRIDGE, 'nud', 'permanent']);
  const want = new Map(desired.map((n) => [n.ip, n.mac]));
  const lines: string[] = [];
  for (const h of have) if (want.get(h.dst) !== h.lladdr) lines.push(`neigh del ${h.dst} dev ${BRIDGE}`);
  const haveMap = new Map(have.map((h) => [h.dst, h.lladdr]));
  for (const [ip, mac] of want) if (haveMap.get(ip) !== mac) lines.push(`neigh replace ${ip} lladdr ${mac} dev ${BRIDGE} nud permanent`);
  await ipBatch(lines);
}
