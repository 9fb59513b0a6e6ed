// Profiles both routers while one TCP flow crosses the sleeve: V8 CPU profiles
// (--cpu-prof) of each router, for finding where the sleeve spends its time.
//
//   npm run build && node dist/bench/sleeve-profile.js [--seconds 5] [--dir /tmp/weft-prof] [--password]
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { Cluster, eventually } from '../test/harness/cluster.js';
import { run } from '../test/harness/exec.js';

const arg = (name: string, dflt: string) =>
  process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt;
const seconds = Number(arg('--seconds', '5'));
const dir = arg('--dir', '/tmp/weft-prof');
const password = process.argv.includes('--password');

async function main(): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const env: NodeJS.ProcessEnv = {};
  if (password) env.WEFT_PASSWORD = 'profile password';
  const cluster = await Cluster.create(2, { env });
  const routers: ReturnType<typeof spawn>[] = [];
  try {
    const [a, b] = cluster.hosts;
    const args = ['--ipalloc-init', 'consensus=2', ...(password ? [] : ['--no-fastdp'])];
    // The routers run in the foreground under `node --cpu-prof` (not allowed in NODE_OPTIONS, so not through weft launch).
    for (const [h, peers] of [
      [a, []],
      [b, [a.ip]],
    ] as const) {
      routers.push(
        spawn(
          'ip',
          [
            'netns',
            'exec',
            h.ns,
            process.execPath,
            `--cpu-prof`,
            `--cpu-prof-dir=${dir}`,
            new URL('../router/main.js', import.meta.url).pathname,
            '--data-dir',
            h.dataDir,
            '--nickname',
            h.nickname,
            ...args,
            ...peers,
          ],
          { stdio: 'ignore', env: { ...process.env, ...env } },
        ),
      );
      await eventually(`${h.nickname} up`, async () => (await h.weft(['status'])).code === 0, 20_000);
    }
    const w1 = await cluster.container('w1');
    const w2 = await cluster.container('w2');
    await a.weft(['attach', '10.40.0.1/16', `netns:${w1}`]);
    await b.weft(['attach', '10.40.0.2/16', `netns:${w2}`]);
    await eventually(
      'path up',
      async () => (await run('ip', ['netns', 'exec', w1, 'ping', '-c', '1', '-W', '1', '10.40.0.2'])).code === 0,
      20_000,
    );
    const server = spawn('ip', ['netns', 'exec', w2, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    const r = await run('ip', ['netns', 'exec', w1, 'iperf3', '-c', '10.40.0.2', '-t', String(seconds)], {
      timeoutMs: (seconds + 20) * 1000,
    });
    server.kill('SIGKILL');
    console.log(
      r.stdout
        .split('\n')
        .filter((l) => /sender|receiver/.test(l))
        .join('\n'),
    );
    console.log(
      (await run('ip', ['netns', 'exec', w1, 'ping', '-c', '50', '-i', '0.01', '10.40.0.2'])).stdout
        .split('\n')
        .slice(-2)
        .join('\n'),
    );
    for (const h of [a, b]) await h.weft(['stop']);
    await new Promise((r) => setTimeout(r, 1000));
    console.log(`profiles in ${dir}`);
  } finally {
    for (const r of routers) r.kill('SIGKILL');
    await cluster.cleanup();
  }
}

await main();
