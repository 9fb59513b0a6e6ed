// The bridge's own tables, for every backend at once: a static entry per remote
// container MAC on the port of the backend that carries it (so frames for remote
// containers go there and are not flooded to local ones), and a permanent
// neighbour entry for every remote container address some overlay reaches: with
// neigh_suppress on the backends' ports the bridge answers ARP itself, so ARP
// does not cross hosts. The kernel state is read back and only the difference
// applied, in one `bridge -batch` and one `ip -batch`, deletions first: a MAC
// that moves between backends is never on two ports.
import { BRIDGE } from './bridge.js';
import { bridgeBatch, bridgeJson, ipBatch, ipJson } from '../net/command.js';

export interface NeighEntry {
  ip: string;
  mac: string;
}

/** Bridge (master) entries we made on a port: static ones (a port's own MAC is permanent). */
async function portEntries(dev: string): Promise<string[]> {
  const rows = await bridgeJson<{ mac: string; dst?: string; master?: string; state?: string }[]>([
    'fdb',
    'show',
    'dev',
    dev,
  ]);
  return rows.filter((r) => !r.dst && r.master === BRIDGE && r.state === 'static').map((r) => r.mac);
}

/** Brings the static entries of each port to exactly its MACs. */
export async function programPortEntries(byPort: Map<string, string[]>): Promise<void> {
  const dels: string[] = [];
  const adds: string[] = [];
  for (const [dev, macs] of byPort) {
    const have = new Set(await portEntries(dev));
    const want = new Set(macs);
    for (const mac of have) if (!want.has(mac)) dels.push(`fdb del ${mac} dev ${dev} master`);
    for (const mac of want) if (!have.has(mac)) adds.push(`fdb replace ${mac} dev ${dev} master static`);
  }
  await bridgeBatch([...dels, ...adds]);
}

/** Brings the bridge's permanent neighbour entries to exactly `desired`. */
export async function programNeighbours(desired: NeighEntry[]): Promise<void> {
  const have = await ipJson<{ dst: string; lladdr?: string }[]>(['neigh', 'show', 'dev', BRIDGE, 'nud', 'permanent']);
  const want = new Map(desired.map((n) => [n.ip, n.mac]));
  const lines: string[] = [];
  for (const h of have) if (want.get(h.dst) !== h.lladdr) lines.push(`neigh del ${h.dst} dev ${BRIDGE}`);
  const haveMap = new Map(have.map((h) => [h.dst, h.lladdr]));
  for (const [ip, mac] of want)
    if (haveMap.get(ip) !== mac) lines.push(`neigh replace ${ip} lladdr ${mac} dev ${BRIDGE} nud permanent`);
  await ipBatch(lines);
}
