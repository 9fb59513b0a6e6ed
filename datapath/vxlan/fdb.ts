// The kernel VXLAN device's own forwarding table, programmed from what the
// control plane knows: for every remote container MAC a static entry to its
// peer's underlay address, and an all-zeros flood entry per peer (broadcast,
// unknown unicast). Read back and only the difference applied, in one
// `bridge -batch`, so nothing stale survives.
import { bridgeBatch, bridgeJson } from '../../net/command.js';

export const VXLAN_DEV = 'vxlan-weft';
export const FLOOD_MAC = '00:00:00:00:00:00';

export interface FdbEntry {
  mac: string;
  dst: string;
}

const key = (e: FdbEntry) => `${e.mac} ${e.dst}`;

export async function readFdb(): Promise<FdbEntry[]> {
  const rows = await bridgeJson<{ mac: string; dst?: string; ifname?: string }[]>(['fdb', 'show', 'dev', VXLAN_DEV]);
  return rows.filter((r) => r.dst).map((r) => ({ mac: r.mac, dst: r.dst! }));
}

/** Brings the VXLAN device's entries to exactly `desired`. */
export async function programFdb(desired: FdbEntry[]): Promise<{ added: number; removed: number }> {
  const want = new Map(desired.map((e) => [key(e), e]));
  const have = new Map((await readFdb()).map((e) => [key(e), e]));
  const lines: string[] = [];
  let removed = 0;
  let added = 0;
  for (const [k, e] of have) {
    if (want.has(k)) continue;
    lines.push(`fdb del ${e.mac} dev ${VXLAN_DEV} dst ${e.dst}`);
    removed++;
  }
  for (const [k, e] of want) {
    if (have.has(k)) continue;
    // Several flood destinations share the zero MAC: append; a container MAC lives at one peer: replace.
    lines.push(
      `fdb ${e.mac === FLOOD_MAC ? 'append' : 'replace'} ${e.mac} dev ${VXLAN_DEV} dst ${e.dst} self permanent`,
    );
    added++;
  }
  await bridgeBatch(lines);
  return { added, removed };
}
