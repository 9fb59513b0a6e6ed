// Profiles both routers while one TCP flow crosses the sleeve: V8 CPU profiles
// (--cpu-prof) of each router, for finding where the sleeve spends its time.
//
//   npm run build && node dist/bench/sleeve-profile.js [--seconds 5] [--dir /tmp/weft-prof] [--password]
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { Cluster, eventually } from '../test/harness/cluster.js';
import { run } from '../test/harness/exec.js';

const arg = (name: string, dflt: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
const seconds = Number(arg('--seconds', '5'));
const dir = arg('--dir', '/tmp/weft-prof');
const password = process.argv.includes('--password');

async function main(): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const env: NodeJS.ProcessEnv = { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${dir}` };
  if (password) env.WEFT_PASSWORD = 'profile password';
  const cluster = await Cluster.create(2, { env });
  try {
    const [a, b] = cluster.hosts;
    const args = ['--ipalloc-init', 'consensus=2', ...(password ? [] : ['--no-fastdp'])];
    await a.launch([], args);
    await b.launch([a.ip], args);
    const w1 = await cluster.container('w1');
    const w2 = await cluster.container('w2');
    await a.weft(['attach', '10.40.0.1/16', `netns:${w1}`], { env: { NODE_OPTIONS: '' } });
    await b.weft(['attach', '10.40.0.2/16', `netns:${w2}`], { env: { NODE_OPTIONS: '' } });
    await eventually('path up', async () => (await run('ip', ['netns', 'exec', w1, 'ping', '-c', '1', '-W', '1', '10.40.0.2'])).code === 0, 20_000);
    const server = spawn('ip', ['netns', 'exec', w2, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    const r = await run('ip', ['netns', 'exec', w1, 'iperf3', '-c', '10.40.0.2', '-t', String(seconds)], { timeoutMs: (seconds + 20) * 1000 });
    server.kill('SIGKILL');
    console.log(r.stdout.split('\n').filter((l) => /sender|receiver/.test(l)).join('\n'));
    console.log((await run('ip', ['netns', 'exec', w1, 'ping', '-c', '50', '-i', '0.01', '10.40.0.2'])).stdout.split('\n').slice(-2).join('\n'));
    for (const h of [a, b]) await h.weft(['stop'], { env: { NODE_OPTIONS: '' } });
    console.log(`profiles in ${dir}`);
  } finally {
    await cluster.cleanup();
  }
}

await main();
