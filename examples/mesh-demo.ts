// The mesh demo: three hosts made of network namespaces on a private underlay
// (198.18.0.0/24), a weft router on each, launched as `A`, `B A`, `C B`. It
// waits until discovery has joined them into a full mesh, prints what
// `weft status` shows, and removes everything it made, even on Ctrl-C.
//
//   npm run demo        (as root; builds first)
import type { Report } from '../router/contract.js';
import { Cluster, eventually } from '../test/harness/cluster.js';

if (process.getuid?.() !== 0) {
  console.error('mesh-demo: needs root to create network namespaces (run as root, or with sudo)');
  process.exit(1);
}

const cluster = await Cluster.create(3, { routerArgs: ['--heartbeat-interval', '1s'] });
let cleaning = false;
const cleanup = async () => {
  if (cleaning) return;
  cleaning = true;
  await cluster.cleanup();
  console.log('\ncleaned up: routers stopped, namespaces removed');
};
process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));
process.on('SIGTERM', () => void cleanup().then(() => process.exit(143)));

try {
  const [a, b, c] = cluster.hosts;
  const show = async (title: string, args: string[]) => {
    console.log(`\n$ weft ${args.join(' ')}    # on ${title}`);
    const r = await (title === 'host1' ? a : title === 'host2' ? b : c).weft(args);
    process.stdout.write(r.stdout || r.stderr);
  };
  console.log(`hosts: ${cluster.hosts.map((h) => `${h.nickname}=${h.ip}`).join(', ')}`);
  console.log(`\n$ weft launch                 # on host1`);
  process.stdout.write((await a.launch()).stdout);
  console.log(`\n$ weft launch ${a.ip}        # on host2`);
  process.stdout.write((await b.launch([a.ip])).stdout);
  console.log(`\n$ weft launch ${b.ip}        # on host3`);
  process.stdout.write((await c.launch([b.ip])).stdout);
  const t0 = Date.now();
  await eventually(
    'a full mesh of three',
    async () => {
      const rs = await Promise.all([a, b, c].map((h) => h.report<Report>()));
      return rs.every(
        (r) => r.peers.length === 3 && r.connections.filter((x) => x.state === 'established').length === 2,
      );
    },
    30_000,
  );
  console.log(`\nfull mesh after ${Date.now() - t0} ms (host1 and host3 found each other through host2's gossip)`);
  await show('host1', ['status']);
  await show('host1', ['status', 'peers']);
  await show('host1', ['status', 'connections']);
  await show('host3', ['status', 'connections']);
} catch (err) {
  console.error(`mesh-demo failed: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
