// The kernel VXLAN devices' own forwarding tables, programmed from what the
// control plane knows: for every remote container MAC a static entry to its
// peer's underlay address, and an all-zeros flood entry per peer (broadcast,
// unknown unicast). Read back and only the difference applied, in one
// `bridge -batch`, so nothing stale survives. A VXLAN device speaks one underlay
// family: IPv4 peers are on VXLAN_DEV, IPv6 peers on VXLAN6_DEV.
import { bridgeBatch, bridgeJson } from '../../net/command.js';

export const VXLAN_DEV = 'vxlan-weft';
export const VXLAN6_DEV = 'vxlan-weft6';
export const FLOOD_MAC = '00:00:00:00:00:00';

export interface FdbEntry {
  mac: string;
  dst: string;
}

const key = (e: FdbEntry) => `${e.mac} ${e.dst}`;

/** The device that carries traffic to an underlay address. */
export function deviceFor(dst: string): string {
  return dst.includes(':') ? VXLAN6_DEV : VXLAN_DEV;
}

export async function readFdb(dev: string = VXLAN_DEV): Promise<FdbEntry[]> {
  const rows = await bridgeJson<{ mac: string; dst?: string; ifname?: string }[]>(['fdb', 'show', 'dev', dev]);
  return rows.filter((r) => r.dst).map((r) => ({ mac: r.mac, dst: r.dst! }));
}

/** Brings a VXLAN device's entries to exactly `desired`. */
export async function programFdb(
  desired: FdbEntry[],
  dev: string = VXLAN_DEV,
): Promise<{ added: number; removed: number }> {
  const want = new Map(desired.map((e) => [key(e), e]));
  const have = new Map((await readFdb(dev)).map((e) => [key(e), e]));
  const lines: string[] = [];
  let removed = 0;
  let added = 0;
  for (const [k, e] of have) {
    if (want.has(k)) continue;
    lines.push(`fdb del ${e.mac} dev ${dev} dst ${e.dst}`);
    removed++;
  }
  for (const [k, e] of want) {
    if (have.has(k)) continue;
    // Several flood destinations share the zero MAC: append; a container MAC lives at one peer: replace.
    lines.push(`fdb ${e.mac === FLOOD_MAC ? 'append' : 'replace'} ${e.mac} dev ${dev} dst ${e.dst} self permanent`);
    added++;
  }
  await bridgeBatch(lines);
  return { added, removed };
}
