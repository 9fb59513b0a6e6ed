// Attacks from inside a container, on namespace hosts with the real kernel: the
// router's ports (mesh, sleeve, VXLAN, API, metrics) at every address of its
// host, a weft handshake, and the host's other services. Each must fail, while
// what a container is meant to reach works: the DNS server, other containers,
// and the host once it is exposed to the container's subnet.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { must, run } from '../harness/exec.js';
import { echoServer, startServer } from '../harness/traffic.js';
import { ruleCounter, sendUdp, tcpConnect } from '../harness/attacker.js';

const FAST = ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'];
/** A service of the host's own, not weft's: a container must not reach it either. */
const HOST_SERVICE = `require('node:net').createServer((s) => s.end('host secret')).listen(2222, '0.0.0.0', () => process.stdout.write('ready\\n')); setTimeout(() => process.exit(0), 120000);`;

describeAsRoot('a container against its own host', () => {
  let cluster: Cluster;
  let h1: Host;
  let evil: string;
  let friend: { ns: string; ip: string };
  const stoppers: (() => void)[] = [];
  beforeAll(async () => {
    cluster = await Cluster.create(2, { routerArgs: FAST });
    [h1] = await cluster.launchAll();
    const h2 = cluster.hosts[1];
    evil = await cluster.container('evil');
    const a = await h1.weft(['attach', `netns:${evil}`]);
    if (a.code !== 0) throw new Error(a.stderr);
    friend = { ns: await cluster.container('friend'), ip: '' };
    const b = await h2.weft(['attach', '-h', 'friend.weft.local', `netns:${friend.ns}`]);
    if (b.code !== 0) throw new Error(b.stderr);
    friend.ip = b.stdout.trim().split('/')[0];
    stoppers.push((await startServer(h1.ns, HOST_SERVICE, [], 'host service')).stop);
    stoppers.push((await echoServer(friend.ns, 7000)).stop);
    // The attacker is root in its container: it routes the underlay through its bridge, to aim at the host's own address.
    await must('ip', ['-n', evil, 'route', 'add', '198.18.0.0/24', 'dev', 'ethwe']);
  }, 120_000);
  afterAll(async () => {
    for (const s of stoppers) s();
    await cluster?.cleanup();
  });

  it('reaches the DNS server and other containers, and no port of the router or the host at any of its addresses', async () => {
    // What a container is meant to reach.
    const dns = await eventually('a name from the DNS server', async () =>
      (await run('ip', ['netns', 'exec', evil, 'getent', 'hosts', 'friend.weft.local'])).stdout.trim(),
    );
    expect(dns).toContain(friend.ip);
    await eventually(
      'another container',
      async () => (await tcpConnect(evil, friend.ip, 7000)) === 'open',
      15_000,
      300,
    );
    // What it must not: the mesh, the API, metrics, and the host's own service, at the bridge's address and the underlay's.
    for (const addr of ['169.254.83.83', h1.ip]) {
      for (const port of [6783, 6784, 6782, 2222])
        expect(`${addr}:${port} ${await tcpConnect(evil, addr, port)}`).toMatch(/ closed/);
    }
    // From the host itself, the router answers.
    expect(await tcpConnect(h1.ns, '127.0.0.1', 6784)).toBe('open');
    expect(await tcpConnect(h1.ns, '127.0.0.1', 6782)).toBe('open');
    expect(await tcpConnect(h1.ns, h1.ip, 6783)).toBe('open');
  });

  it('UDP to the sleeve and VXLAN ports from a container is dropped before the router or the kernel sees it', async () => {
    const list = async () => (await h1.exec('nft', ['list', 'chain', 'inet', 'weft', 'from_containers'])).stdout;
    const before = ruleCounter(await list(), "the router's ports are not for containers");
    for (const port of [6783, 6784])
      await sendUdp(evil, '169.254.83.83', port, Buffer.from('0101000000000000', 'hex'), undefined, 3);
    await sendUdp(evil, h1.ip, 6784, Buffer.from('0800000000776500', 'hex'), undefined, 3);
    expect(ruleCounter(await list(), "the router's ports are not for containers") - before).toBeGreaterThanOrEqual(9);
    const report = await h1.report<{ datapath: { sleeve: { refused: number; malformed: number } } }>();
    expect(report.datapath.sleeve.malformed).toBe(0);
  });

  it('a weft handshake from a container gets no answer: it cannot join the mesh, even without a password', async () => {
    const script = `const s = require('node:net').connect(6783, '169.254.83.83'); let got = 0;
      s.on('connect', () => s.write(Buffer.concat([Buffer.from('weft'), Buffer.from([2, 2, 0]), require('node:crypto').randomBytes(32)])));
      s.on('data', (d) => (got += d.length)); s.on('error', () => {});
      setTimeout(() => { process.stdout.write(String(got)); process.exit(0); }, 2000);`;
    const r = await run('ip', ['netns', 'exec', evil, process.execPath, '-e', script]);
    expect(r.stdout.trim()).toBe('0');
    expect((await h1.report<{ peers: unknown[] }>()).peers).toHaveLength(2);
  });

  it("once the host is exposed, its subnet reaches the host; the router's ports stay closed", async () => {
    const exposed = (await h1.weft(['expose'])).stdout.trim().split('/')[0];
    expect(exposed).toMatch(/^10\.(3[2-9]|4[0-7])\./); // in the allocation range, 10.32.0.0/12
    try {
      await eventually(
        'the host service through the exposed address',
        async () => (await tcpConnect(evil, exposed, 2222)) === 'open',
        10_000,
        300,
      );
      for (const port of [6783, 6784, 6782])
        expect(`${exposed}:${port} ${await tcpConnect(evil, exposed, port)}`).toMatch(/ closed/);
    } finally {
      await h1.weft(['hide']);
    }
    expect(await tcpConnect(evil, exposed, 2222)).toMatch(/^closed/);
  });
});
