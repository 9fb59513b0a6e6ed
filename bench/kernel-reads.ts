// What the router's periodic reads of kernel state cost it, per read, the ways it has: the VXLAN
// heartbeat counters (each second), the firewall check (every 5 s) and the bridge check's links
// (every 5 s), each read over netlink by the addon in the call (as the router does with the addon)
// against the long-lived nft session and sysfs (as it does without, and did before): the anchor,
// measured in the same run, in interleaved rounds. CPU is the reading process's own (user + system,
// from process.cpuUsage), which is what an idle router pays; nft's own process is left out (it is
// not the router's, though the machine pays it too).
//
// In a namespace of its own: a bridge with two veth ports (weft's flags), and a netdev table like
// weft_hb with one counting rule per peer (--peers, on two chains as with an IPv6 underlay). With
// --every MS the reads are that far apart, as in a router (which reads once a second or every 5 s):
// its code then runs cold, never optimised and with its caches gone, and costs several times more.
//
//   npm run build && node dist/bench/kernel-reads.js [--reads 2000] [--rounds 5] [--peers 3] [--every 0]
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { numberArg } from './args.js';
import { NftSession, nftObjects } from '../net/nft-session.js';
import { readRuleCounters, rulesetGeneration } from '../datapath/nft-netlink.js';
import { readLink } from '../datapath/link-netlink.js';
import { sysfsLinkState } from '../datapath/bridge.js';

const READS = numberArg('reads', 2000);
const ROUNDS = numberArg('rounds', 5);
const PEERS = numberArg('peers', 3);
const EVERY_MS = numberArg('every', 0);
const ns = `weftbench-kr${process.pid}`;

function must(cmd: string, args: string[], input?: string): void {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** µs of this process's CPU per call (all its threads, as /proc counts a router's), over `n` calls. */
async function cpuPerCall(n: number, call: () => unknown): Promise<number> {
  let used = 0;
  for (let i = 0; i < n; i++) {
    if (EVERY_MS > 0) await new Promise((r) => setTimeout(r, EVERY_MS));
    const before = process.cpuUsage();
    await call();
    const u = process.cpuUsage(before);
    used += u.user + u.system;
  }
  return used / n;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs: number[]) => `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}`;

/** Runs inside the namespace (`ip netns exec`, which also gives it the namespace's sysfs). */
async function inside(): Promise<void> {
  const nft = new NftSession();
  const ways: [string, () => unknown][] = [
    ['heartbeat counters: netlink dump', () => readRuleCounters('netdev', 'hb')],
    [
      'heartbeat counters: nft session (anchor)',
      async () => nftObjects(await nft.list('list table netdev hb'), 'rule').length,
    ],
    ['firewall check: ruleset generation', () => rulesetGeneration()],
    [
      'firewall check: nft listings (anchor)',
      async () => {
        await nft.list('list ruleset');
        for (const f of ['ip', 'ip6']) await nft.list(`list chain ${f} filter FORWARD`).catch(() => null);
      },
    ],
    ['bridge check, 3 links: netlink', () => ['br0', 'p0', 'p1'].map((d) => readLink(d))],
    ['bridge check, 3 links: sysfs (anchor)', () => ['br0', 'p0', 'p1'].map((d) => sysfsLinkState(d))],
  ];
  // Both ways give the same answers before anything is timed.
  const viaNft = nftObjects<{ comment?: string }>(await nft.list('list table netdev hb'), 'rule').length;
  if (viaNft !== [...readRuleCounters('netdev', 'hb')!.values()].reduce((n, c) => n + c.rules, 0))
    throw new Error('netlink and nft disagree on the rules');
  if (!isDeepStrictEqual(readLink('p0'), sysfsLinkState('p0'))) throw new Error('netlink and sysfs disagree on p0');
  const results = new Map<string, number[]>(ways.map(([name]) => [name, []]));
  for (let round = 0; round < ROUNDS; round++)
    for (const [name, call] of round % 2 === 0 ? ways : [...ways].reverse())
      results.get(name)!.push(await cpuPerCall(READS, call));
  nft.end();
  console.log(JSON.stringify([...results]));
}

async function main(): Promise<void> {
  if (process.argv.includes('--inside')) return inside();
  const rules = Array.from({ length: PEERS }, (_, i) => {
    const mac = `02:00:00:00:01:${i.toString(16).padStart(2, '0')}`;
    return `    ether saddr ${mac} ether type 0x88b5 counter drop comment "${mac}"`;
  });
  try {
    must('ip', ['netns', 'add', ns]);
    must(
      'ip',
      ['-n', ns, '-batch', '-'],
      [
        'link add br0 type bridge',
        'link add p0 type veth peer name q0',
        'link add p1 type veth peer name q1',
        'link set p0 master br0',
        'link set p1 master br0',
        'link set dev p0 type bridge_slave learning off neigh_suppress on isolated on',
        'link set dev p1 type bridge_slave learning off neigh_suppress on isolated on',
        'link set br0 up',
        'link set p0 up',
        'link set p1 up',
        '',
      ].join('\n'),
    );
    must(
      'ip',
      ['netns', 'exec', ns, 'nft', '-f', '-'],
      [
        'table netdev hb {',
        '  chain in { type filter hook ingress device "p0" priority -500;',
        ...rules,
        '  }',
        '  chain in1 { type filter hook ingress device "p1" priority -500;',
        ...rules,
        '  }',
        '}',
        'table inet weft {',
        '  chain forward {',
        '    type filter hook forward priority 0;',
        '    counter accept comment "x"',
        '  }',
        '}',
        '',
      ].join('\n'),
    );
    const r = spawnSync(
      'ip',
      ['netns', 'exec', ns, process.execPath, process.argv[1], '--inside', ...process.argv.slice(2)],
      {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    if (r.status !== 0) throw new Error('the measurement inside the namespace failed');
    const results = new Map<string, number[]>(JSON.parse(r.stdout.trim().split('\n').at(-1)!));
    console.log(
      `${ROUNDS} interleaved rounds of ${READS} reads each${EVERY_MS ? `, ${EVERY_MS} ms apart` : ''}; a table of ${PEERS} peers' rules on two chains; µs of the reader's CPU per read, median (spread)`,
    );
    console.log('| read | netlink (the addon) | anchor: nft session / sysfs | ratio |');
    console.log('|---|---|---|---|');
    for (const what of ['heartbeat counters', 'firewall check', 'bridge check, 3 links']) {
      const mine = [...results].find(([k]) => k.startsWith(what) && !k.includes('anchor'))![1];
      const anchor = [...results].find(([k]) => k.startsWith(what) && k.includes('anchor'))![1];
      console.log(
        `| ${what} | ${median(mine).toFixed(1)} µs (${spread(mine)}) | ${median(anchor).toFixed(1)} µs (${spread(anchor)}) | ${(median(mine) / median(anchor)).toFixed(3)} |`,
      );
    }
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
    rmSync(`/run/netns/${ns}`, { force: true });
  }
}

await main();
