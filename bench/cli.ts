// The CLI's start-up: `weft status` against a running router on a namespace host,
// interleaved with the anchor `node -e 0` (Node's own start on this machine), in
// ROUNDS rounds. Prints medians, the CLI's time over Node's own, and peak memory;
// also `weft status --json` (the commander path, which renders the report itself).
//
//   npm run build && node dist/bench/cli.js [--rounds 30] [--node PATH] [--cli OTHER/dist/cli/weft.cjs]
//
// The environment is kept as it is, apart from NODE_EXTRA_CA_CERTS: Node 20 reads that
// bundle at every start (40 ms on this machine), and it says nothing about weft. Pass
// --keep-ca-env to measure with it.
import { spawnSync } from 'node:child_process';
import { Cluster, WEFT_CLI } from '../test/harness/cluster.js';
import { numberArg, stringArg } from './args.js';

const ROUNDS = numberArg('rounds', 30);
const NODE = stringArg('node', process.execPath);
const KEEP_CA_ENV = process.argv.includes('--keep-ca-env');
/** The CLI to measure (another checkout's dist/cli/weft.cjs, to compare). */
const CLI = stringArg('cli', WEFT_CLI);

interface Sample {
  ms: number;
  maxRssMb: number;
}

/**
 * One run inside the host's namespace: wall time (ms, measured here, so `ip netns exec` and GNU
 * time are in every case alike, the anchor's too) and peak RSS (GNU time's %M).
 */
function once(ns: string, argv: string[]): Sample {
  const env = { ...process.env };
  if (!KEEP_CA_ENV) delete env.NODE_EXTRA_CA_CERTS;
  const t0 = process.hrtime.bigint();
  const r = spawnSync('ip', ['netns', 'exec', ns, '/usr/bin/time', '-f', '%M', NODE, ...argv], {
    env,
    encoding: 'utf8',
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return { ms, maxRssMb: Number(r.stderr.trim().split('\n').pop()) / 1024 };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  if (spawnSync('/usr/bin/time', ['-f', '%M', 'true']).status !== 0)
    throw new Error('needs GNU time at /usr/bin/time (apt-get install time)');
  const cluster = await Cluster.create(1);
  try {
    const [a] = cluster.hosts;
    await a.launch();
    const cases: [string, string[]][] = [
      ['node -e 0 (anchor)', ['-e', '0']],
      ['weft status', [CLI, 'status', '--data-dir', a.dataDir]],
      ['weft status --json', [CLI, 'status', '--json', '--data-dir', a.dataDir]],
      ['weft --help', [CLI, '--help']],
    ];
    const samples = new Map<string, Sample[]>(cases.map(([name]) => [name, []]));
    for (let round = 0; round < ROUNDS; round++) {
      // Interleaved, in an order that rotates, so a drift of the machine weighs on all alike.
      for (let k = 0; k < cases.length; k++) {
        const [name, argv] = cases[(round + k) % cases.length];
        samples.get(name)!.push(once(a.ns, argv));
      }
    }
    const anchor = median(samples.get(cases[0][0])!.map((s) => s.ms));
    console.log(
      `${NODE} ${spawnSync(NODE, ['--version'], { encoding: 'utf8' }).stdout.trim()}, ${ROUNDS} rounds${KEEP_CA_ENV ? ', NODE_EXTRA_CA_CERTS kept' : ''}`,
    );
    for (const [name] of cases) {
      const s = samples.get(name)!;
      const ms = median(s.map((x) => x.ms));
      const rss = Math.max(...s.map((x) => x.maxRssMb));
      console.log(
        `  ${name.padEnd(20)} median ${ms.toFixed(0).padStart(4)} ms (${(ms / anchor).toFixed(2)}x the anchor, +${(ms - anchor).toFixed(0)} ms), peak RSS ${rss.toFixed(1)} MB`,
      );
    }
  } finally {
    await cluster.cleanup();
  }
}

await main();
