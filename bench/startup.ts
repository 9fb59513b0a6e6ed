// A router's start and its idle cost, on two namespace hosts: `weft launch` until the API answers
// (the command returns then), then the router's RSS and CPU per second while idle, first with no
// container and then with one attached on each host. ROUNDS starts (the routers stopped between
// them, the containers detached); medians over rounds and hosts. The anchor measured in the same
// run is Node's own start (`node -e 0` in the host's namespace); Weave's figures on this kind of
// machine (shared/reference/measurements.md: ready in about 255 ms, 50 MB idle) are printed beside.
//
//   npm run build && node dist/bench/startup.js [--rounds 5] [--settle 30] [--window 10]
import { spawnSync } from 'node:child_process';
import { Cluster, type Host, eventually, sleep } from '../test/harness/cluster.js';
import { numberArg } from './args.js';
import { cpuSeconds, rssMiB, threadCpuSeconds } from './measure.js';

const ROUNDS = numberArg('rounds', 5);
/** Seconds after start (or attach) before idle is measured. */
const SETTLE = numberArg('settle', 30);
/** Seconds over which idle CPU is measured. */
const WINDOW = numberArg('window', 10);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs: number[]) => `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}`;

interface Idle {
  rss: number;
  /** ms of CPU per second: the whole process, its main thread, its other threads. */
  cpu: number;
  main: number;
  others: number;
}

/** RSS (MiB) and CPU (ms per second over WINDOW) of each host's router, measured side by side. */
async function idle(hosts: Host[]): Promise<Idle[]> {
  const pids = hosts.map((h) => h.routerPid()!);
  const before = pids.map(cpuSeconds);
  const threadsBefore = pids.map(threadCpuSeconds);
  const t0 = performance.now();
  await sleep(WINDOW * 1000);
  const secs = (performance.now() - t0) / 1000;
  return pids.map((p, i) => {
    const t = threadCpuSeconds(p);
    return {
      rss: rssMiB(p),
      cpu: ((cpuSeconds(p) - before[i]) * 1000) / secs,
      main: ((t.main - threadsBefore[i].main) * 1000) / secs,
      others: ((t.others - threadsBefore[i].others) * 1000) / secs,
    };
  });
}

/** Node's own start in a host's namespace (ms), the anchor. */
function nodeStart(ns: string): number {
  const t0 = performance.now();
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '-e', '0']);
  if (r.status !== 0) throw new Error('node -e 0 failed');
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const cluster = await Cluster.create(2);
  const launchMs: number[] = [];
  const anchorMs: number[] = [];
  const bare: Idle[] = [];
  const loaded: Idle[] = [];
  try {
    const [a, b] = cluster.hosts;
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [h, peers] of [
        [a, []],
        [b, [a.ip]],
      ] as const) {
        anchorMs.push(nodeStart(h.ns));
        const t0 = performance.now();
        await h.launch([...peers]);
        launchMs.push(performance.now() - t0);
      }
      await eventually('the two routers see each other', async () => {
        return (await b.report<{ peers: unknown[] }>()).peers.length === 2;
      });
      await sleep(SETTLE * 1000);
      bare.push(...(await idle([a, b])));
      const containers = await Promise.all(
        [a, b].map(async (h) => ({ h, c: await cluster.attached(h, `r${round}${h.nickname}`) })),
      );
      await sleep(SETTLE * 1000);
      loaded.push(...(await idle([a, b])));
      for (const { h, c } of containers) {
        const r = await h.weft(['detach', `netns:${c.ns}`]);
        if (r.code !== 0) throw new Error(`detach on ${h.nickname}: ${r.stderr}`);
      }
      for (const h of [a, b]) {
        const r = await h.weft(['stop']);
        if (r.code !== 0) throw new Error(`stop on ${h.nickname}: ${r.stderr}`);
      }
      const last = (xs: Idle[]) =>
        xs
          .slice(-2)
          .map((x) => `${x.rss.toFixed(1)} MiB ${x.cpu.toFixed(1)} ms/s`)
          .join(', ');
      process.stdout.write(
        `round ${round}: launch ${launchMs
          .slice(-2)
          .map((x) => x.toFixed(0))
          .join(', ')} ms; idle ${last(bare)}; with a container ${last(loaded)}\n`,
      );
    }
  } finally {
    await cluster.cleanup();
  }
  const rows: [string, string, string, string][] = [
    [
      '`weft launch` until the API answers',
      `${median(launchMs).toFixed(0)} ms (${spread(launchMs)})`,
      `node -e 0: ${median(anchorMs).toFixed(0)} ms`,
      'Weave: about 255 ms',
    ],
    [
      'idle RSS, no container',
      `${median(bare.map((x) => x.rss)).toFixed(1)} MiB (${spread(bare.map((x) => x.rss))})`,
      '',
      'Weave: 50 MB',
    ],
    ['idle RSS, a container', `${median(loaded.map((x) => x.rss)).toFixed(1)} MiB`, '', ''],
    [
      'idle CPU, no container',
      `${median(bare.map((x) => x.cpu)).toFixed(1)} ms/s (${spread(bare.map((x) => x.cpu))})`,
      '',
      '',
    ],
    [
      'idle CPU, a container',
      `${median(loaded.map((x) => x.cpu)).toFixed(1)} ms/s (${spread(loaded.map((x) => x.cpu))})`,
      '',
      '',
    ],
    [
      'idle CPU, no container: main thread / other threads',
      `${median(bare.map((x) => x.main)).toFixed(1)} / ${median(bare.map((x) => x.others)).toFixed(1)} ms/s`,
      '',
      '',
    ],
  ];
  process.stdout.write(
    `\n${ROUNDS} starts of two routers; idle measured over ${WINDOW} s after ${SETTLE} s; medians (spread)\n`,
  );
  process.stdout.write('| measure | weft | same run | anchor |\n|---|---|---|---|\n');
  for (const r of rows) process.stdout.write(`| ${r.join(' | ')} |\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
