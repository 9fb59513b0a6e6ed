// The weft demo: two hosts made of network namespaces on a private underlay
// (198.18.0.0/24), a weft router on each, a container (a network namespace) on
// each attached to the overlay with an address from IPAM and a DNS name; the
// name resolved inside the other container, ping (if installed), TCP and UDP
// across the hosts over the kernel VXLAN datapath; `weft status`; then
// everything it made is removed, also on Ctrl-C or failure.
//
//   npm run demo        (as root; builds first)
import type { Report } from '../router/contract.js';
import { Cluster, eventually, type Host } from '../test/harness/cluster.js';
import { echo, echoServer } from '../test/harness/traffic.js';
import { run } from '../test/harness/exec.js';

if (process.getuid?.() !== 0) {
  console.error('demo: needs root to create network namespaces (run as root, or with sudo)');
  process.exit(1);
}

const cluster = await Cluster.create(2);
let cleaning = false;
const cleanup = async () => {
  if (cleaning) return;
  cleaning = true;
  await cluster.cleanup();
  console.log('\ncleaned up: routers stopped, containers and namespaces removed');
};
process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));
process.on('SIGTERM', () => void cleanup().then(() => process.exit(143)));

async function sh(h: Host, args: string[]): Promise<string> {
  console.log(`\n${h.nickname}$ weft ${args.join(' ')}`);
  const r = await h.weft(args);
  process.stdout.write(r.stdout || r.stderr);
  if (r.code !== 0) throw new Error(`weft ${args[0]} failed on ${h.nickname}`);
  return r.stdout;
}

try {
  const [a, b] = cluster.hosts;
  console.log(
    `hosts: ${cluster.hosts.map((h) => `${h.nickname} = ${h.ip}`).join(', ')} (each its own network namespace)`,
  );
  const opts = ['--ipalloc-init', 'consensus=2', '--heartbeat-interval', '1s'];
  await sh(a, ['launch', '--nickname', a.nickname, ...opts]);
  await sh(b, ['launch', '--nickname', b.nickname, ...opts, a.ip]);
  await eventually(
    'the two routers to connect',
    async () => (await a.report<Report>()).connections.some((c) => c.state === 'established'),
    30_000,
  );
  const c1 = await cluster.container('web');
  const c2 = await cluster.container('db');
  console.log(`\ncontainers: netns ${c1} (on host1), netns ${c2} (on host2)`);
  const ip1 = (await sh(a, ['attach', '-h', 'web.weft.local', `netns:${c1}`])).trim().split('/')[0];
  const ip2 = (await sh(b, ['attach', '-h', 'db.weft.local', `netns:${c2}`])).trim().split('/')[0];
  const resolved = await eventually(
    'db.weft.local to resolve inside web',
    async () => {
      const g = await run('ip', ['netns', 'exec', c1, 'getent', 'hosts', 'db.weft.local']);
      return g.code === 0 ? g.stdout.trim() : null;
    },
    15_000,
    200,
  );
  console.log(`\nweb$ getent hosts db.weft.local    # inside the container on host1, plain libc DNS\n${resolved}`);
  if ((await run('sh', ['-c', 'command -v ping'])).code === 0) {
    const p = await run('ip', ['netns', 'exec', c1, 'ping', '-c', '3', '-i', '0.2', 'db']);
    console.log(`\nweb$ ping -c 3 db\n${p.stdout.trim()}`);
  }
  const server = await echoServer(c2, 8080);
  try {
    const t0 = Date.now();
    const n = await eventually('TCP from web to db', async () => echo(c1, ip2, 8080, 'tcp', 1_000_000), 15_000, 200);
    console.log(
      `\nweb (${ip1}, host1) -> db (${ip2}, host2): ${n} bytes echoed over TCP (first try to success: ${Date.now() - t0} ms)`,
    );
    console.log(
      `web (${ip1}, host1) -> db (${ip2}, host2): ${await echo(c1, ip2, 8080, 'udp', 1000)} bytes echoed over UDP`,
    );
  } finally {
    server.stop();
  }
  await sh(a, ['status']);
  await sh(a, ['status', 'connections']);
  await sh(a, ['status', 'ipam']);
  await sh(b, ['ps']);
  await sh(a, ['status', 'dns']);
} catch (err) {
  console.error(`demo failed: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
