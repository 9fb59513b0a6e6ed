// The kernel's connection tracking, through Debian's `conntrack` tool: the flows
// it knows, and marking those a policy change no longer allows. A marked flow is
// dropped in both directions by table weft_revoked (policy/nft.ts) for as long as
// the kernel tracks it (and a TCP connection's packets for a day after, from that
// table's memory). Deleting it instead would not do: its next packet
// would be judged as new, and one sent by the side that may open connections (a
// server may send to anyone) would start the same flow again from that side.
import type { Flow } from './model.js';
import { MARK_HEX } from './nft.js';
import { CommandError, conntrack, inNamespace, lines } from '../net/command.js';

/** A flow as conntrack lists it: with its source port too (tcp and udp). */
export interface TrackedFlow extends Flow {
  sport?: number;
}

/** One line of `conntrack -L`, by its original direction (ICMPv6 counts as icmp, as in the rules). */
function parseConntrackLine(line: string): TrackedFlow | null {
  const [raw, num] = line.trim().split(/\s+/, 2);
  // A protocol conntrack has no name for is printed "unknown" and its number: the number is the name.
  const proto = raw === 'icmpv6' ? 'icmp' : raw === 'unknown' ? num : raw;
  const field = (k: string) => new RegExp(`\\b${k}=(\\S+)`).exec(line)?.[1];
  const src = field('src');
  const dst = field('dst');
  if (!proto || !src || !dst) return null;
  const [sport, dport] = [field('sport'), field('dport')];
  const ported = proto === 'tcp' || proto === 'udp';
  return {
    proto,
    src,
    dst,
    ...(dport !== undefined && ported ? { port: Number(dport) } : {}),
    ...(sport !== undefined && ported ? { sport: Number(sport) } : {}),
  };
}

/**
 * The tracked flows that `keep` selects, read as `conntrack -L` prints them, line by line: a host with
 * millions of flows costs time, not memory (there is no limit on the listing's size to overflow).
 * `revoked` lists only the flows marked revoked (true) or only the others (false); absent, all.
 */
export async function listFlows(
  keep: (f: Flow) => boolean,
  netnsPath?: string,
  families: ('ipv4' | 'ipv6')[] = ['ipv4'],
  revoked?: boolean,
): Promise<TrackedFlow[]> {
  const out: TrackedFlow[] = [];
  const byMark = revoked === undefined ? [] : ['--mark', `${revoked ? MARK_HEX : '0'}/${MARK_HEX}`];
  for (const family of families)
    await lines(...inNamespace('conntrack', ['-L', '-f', family, ...byMark], netnsPath), (line) => {
      const f = parseConntrackLine(line);
      if (f && keep(f)) out.push(f);
    });
  return out;
}

/** The flows that one markRevoked each covers: one per protocol, addresses and port (any source port). */
export function byTarget(flows: Flow[]): Flow[] {
  const out = new Map<string, Flow>();
  for (const f of flows) out.set(`${f.proto} ${f.src} ${f.dst} ${f.port ?? ''}`, f);
  return [...out.values()];
}

/** Marks the tracked flows of this 5-tuple (any source port) revoked, or clears the mark. */
export async function markRevoked(f: Flow, revoked: boolean): Promise<void> {
  const v6 = f.src.includes(':');
  const proto = v6 && f.proto === 'icmp' ? 'icmpv6' : f.proto;
  const args = ['-U', '-f', v6 ? 'ipv6' : 'ipv4', '-p', proto, '-s', f.src, '-d', f.dst];
  if (f.port !== undefined) args.push('--dport', String(f.port));
  // In an update the mask says which bits are cleared before the value is XORed in: only ours.
  args.push('--mark', `${revoked ? MARK_HEX : '0'}/${MARK_HEX}`);
  // "0 flow entries" (already gone) makes conntrack exit 1: that is fine; any other failure is not.
  await conntrack(args).catch((err: unknown) => {
    if (!(err instanceof CommandError) || err.exitCode !== 1 || !/\b0 flow entries\b/.test(err.stderr)) throw err;
  });
}
