// Services, measured in one run on two namespace hosts (client on A, backend on B),
// each figure through the VIP against the same backend addressed directly, the
// two interleaved ROUNDS times (medians):
//   - new TCP connections per second (CONCURRENCY loops of connect, one byte each
//     way, reset), for SECONDS;
//   - one TCP flow's throughput (iperf3), for SECONDS;
//   - ping RTT: what the translation adds;
// and the first two also with the client's translation table removed ("no table": a container's
// namespace when no service exists), to show what the table costs traffic that uses no VIP.
// Goal: VIP >= 0.9 of direct for connections per second and throughput.
//
//   apt-get install -y iperf3 && npm run build && node dist/bench/services.js [--rounds 3] [--seconds 5] [--concurrency 8]
import { Cluster, eventually } from '../test/harness/cluster.js';
import { run } from '../test/harness/exec.js';
import { startServer } from '../test/harness/traffic.js';
import { iperf, rtt } from './measure.js';
import { SERVICES_TABLE } from '../services/nft.js';
import { numberArg } from './args.js';

const ROUNDS = numberArg('rounds', 3);
const SECONDS = numberArg('seconds', 5);
const CONCURRENCY = numberArg('concurrency', 8);
const PORT = 8080;

const SERVER = `require('node:net').createServer((s) => { s.on('data', () => s.write('y')); s.on('error', () => {}); })
  .listen(Number(process.argv[1]), '0.0.0.0', () => process.stdout.write('ready\\n')); setTimeout(() => process.exit(0), 3600000);`;

// Connections closed by reset, so neither side keeps TIME_WAIT sockets (or conntrack entries) by the ten thousand.
const CLIENT = `
const net = require('node:net');
const [ip, port, seconds, concurrency] = process.argv.slice(1).map((x, i) => (i === 0 ? x : Number(x)));
let done = 0, failed = 0; const end = Date.now() + seconds * 1000;
function loop() {
  if (Date.now() >= end) return Promise.resolve();
  return new Promise((resolve) => {
    const s = net.connect(port, ip, () => s.write('x'));
    s.once('data', () => { done++; s.resetAndDestroy(); resolve(); });
    s.once('error', () => { failed++; s.destroy(); resolve(); });
  }).then(loop);
}
Promise.all(Array.from({ length: concurrency }, loop)).then(() => { process.stdout.write(JSON.stringify({ perSecond: done / seconds, failed })); });`;

async function connectionsPerSecond(ns: string, ip: string): Promise<number> {
  const r = await run(
    'ip',
    ['netns', 'exec', ns, process.execPath, '-e', CLIENT, ip, String(PORT), String(SECONDS), String(CONCURRENCY)],
    { timeoutMs: (SECONDS + 30) * 1000 },
  );
  if (r.code !== 0) throw new Error(`connection client to ${ip}: ${r.stderr}`);
  const o = JSON.parse(r.stdout) as { perSecond: number; failed: number };
  if (o.failed > 0) throw new Error(`${o.failed} connections to ${ip} failed`);
  return o.perSecond;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const cluster = await Cluster.create(2, {
    routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
  });
  let server: { stop: () => void } | null = null;
  try {
    const [a, b] = await cluster.launchAll();
    const client = await cluster.attached(a, 'client');
    const backend = await cluster.attached(b, 'backend', 'svc');
    server = await startServer(backend.ns, SERVER, [String(PORT)], 'server');
    const created = await a.weft(['service', 'create', 'bench', '--group', 'svc']);
    if (created.code !== 0) throw new Error(created.stderr);
    const vip = created.stdout.split(' ')[1];
    await eventually(
      'the VIP answers',
      async () => (await run('ip', ['netns', 'exec', client.ns, 'ping', '-c', '1', '-W', '1', vip])).code === 0,
      20_000,
    );
    await eventually(
      'the backend answers',
      async () => (await run('ip', ['netns', 'exec', client.ns, 'ping', '-c', '1', '-W', '1', backend.ip])).code === 0,
      20_000,
    );

    const r = {
      connBare: [] as number[],
      connDirect: [] as number[],
      connVip: [] as number[],
      gbitBare: [] as number[],
      gbitDirect: [] as number[],
      gbitVip: [] as number[],
      rttDirect: [] as number[],
      rttVip: [] as number[],
    };
    const table = (await run('ip', ['netns', 'exec', client.ns, 'nft', 'list', 'table', 'ip', SERVICES_TABLE])).stdout;
    for (let i = 0; i < ROUNDS; i++) {
      // "bare": the client's namespace without the translation table, as when no service exists.
      await run('ip', ['netns', 'exec', client.ns, 'nft', 'delete', 'table', 'ip', SERVICES_TABLE]);
      r.connBare.push(await connectionsPerSecond(client.ns, backend.ip));
      r.gbitBare.push((await iperf(backend.ns, client.ns, backend.ip, SECONDS)).gbit);
      const restored = await run('ip', ['netns', 'exec', client.ns, 'nft', '-f', '-'], { input: table });
      if (restored.code !== 0) throw new Error(`restoring the translation table: ${restored.stderr}`);
      r.connDirect.push(await connectionsPerSecond(client.ns, backend.ip));
      r.connVip.push(await connectionsPerSecond(client.ns, vip));
      r.gbitDirect.push((await iperf(backend.ns, client.ns, backend.ip, SECONDS)).gbit);
      r.gbitVip.push((await iperf(backend.ns, client.ns, backend.ip, SECONDS, vip)).gbit);
      r.rttDirect.push(await rtt(client.ns, backend.ip));
      r.rttVip.push(await rtt(client.ns, vip));
    }
    const m = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, median(v)])) as Record<keyof typeof r, number>;
    console.log(`services: client on host A, one backend on host B, ${ROUNDS} interleaved rounds (medians)`);
    console.log(
      `  new connections/s  direct ${m.connDirect.toFixed(0)}  VIP ${m.connVip.toFixed(0)}  ratio ${(m.connVip / m.connDirect).toFixed(3)} (goal >= 0.9); no table ${m.connBare.toFixed(0)}, direct/no table ${(m.connDirect / m.connBare).toFixed(3)}`,
    );
    console.log(
      `  throughput Gbit/s  direct ${m.gbitDirect.toFixed(2)}  VIP ${m.gbitVip.toFixed(2)}  ratio ${(m.gbitVip / m.gbitDirect).toFixed(3)} (goal >= 0.9); no table ${m.gbitBare.toFixed(2)}, direct/no table ${(m.gbitDirect / m.gbitBare).toFixed(3)}`,
    );
    console.log(
      `  ping RTT µs        direct ${m.rttDirect.toFixed(0)}  VIP ${m.rttVip.toFixed(0)}  added ${(m.rttVip - m.rttDirect).toFixed(0)}`,
    );
    console.log(`  rounds: ${JSON.stringify(r)}`);
  } finally {
    server?.stop();
    await cluster.cleanup();
  }
}

await main();
