// The kernel's connection tracking, through Debian's `conntrack` tool: the flows
// it knows, and deleting those a policy change no longer allows (their next
// packet is then judged again as new, and dropped), so revoked means revoked.
import type { Flow } from './model.js';
import { CommandError, conntrack, inNamespace, lines } from '../net/command.js';

/** One line of `conntrack -L`, by its original direction (ICMPv6 counts as icmp, as in the rules). */
function parseConntrackLine(line: string): Flow | null {
  const raw = /^(\S+)\s/.exec(line.trim())?.[1];
  const proto = raw === 'icmpv6' ? 'icmp' : raw;
  const field = (k: string) => new RegExp(`\\b${k}=(\\S+)`).exec(line)?.[1];
  const src = field('src');
  const dst = field('dst');
  if (!proto || !src || !dst) return null;
  const dport = field('dport');
  return {
    proto,
    src,
    dst,
    ...(dport !== undefined && (proto === 'tcp' || proto === 'udp') ? { port: Number(dport) } : {}),
  };
}

/**
 * The tracked flows that `keep` selects, read as `conntrack -L` prints them, line by line: a host with
 * millions of flows costs time, not memory (there is no limit on the listing's size to overflow).
 */
export async function listFlows(
  keep: (f: Flow) => boolean,
  netnsPath?: string,
  families: ('ipv4' | 'ipv6')[] = ['ipv4'],
): Promise<Flow[]> {
  const out: Flow[] = [];
  for (const family of families)
    await lines(...inNamespace('conntrack', ['-L', '-f', family], netnsPath), (line) => {
      const f = parseConntrackLine(line);
      if (f && keep(f)) out.push(f);
    });
  return out;
}

/** Deletes the tracked flows of this 5-tuple (any source port). */
export async function deleteFlow(f: Flow): Promise<void> {
  const v6 = f.src.includes(':');
  const proto = v6 && f.proto === 'icmp' ? 'icmpv6' : f.proto;
  const args = ['-D', '-f', v6 ? 'ipv6' : 'ipv4', '-p', proto, '-s', f.src, '-d', f.dst];
  if (f.port !== undefined) args.push('--dport', String(f.port));
  // "0 flow entries" (already gone) makes conntrack exit 1: that is fine.
  await conntrack(args).catch((err: unknown) => {
    if (!(err instanceof CommandError) || err.exitCode === null) throw err;
  });
}
