// `weft expose` and gateways over IPv6 (routers run with --ipv6): the host gets an address of each
// family on the bridge. Routed by default: a container's IPv6 leaves with its own source address, and
// nothing from outside opens a connection into the subnet. With --ipv6-nat it leaves masqueraded as
// the host. Containers of the exposed subnet reach the host over IPv6, never the router's ports; a
// container of another subnet does not reach it at all, even with a route it made itself.
import { spawn } from 'node:child_process';
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { ruleCounter, tcpConnect } from '../harness/attacker.js';

let cluster: Cluster | null = null;
const stops: (() => void)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) s();
  await cluster?.cleanup();
  cluster = null;
});

/** A TCP server in `ns` on [addr]:port that records each peer's address; stopped after the test. */
async function whoConnects(ns: string, addr: string, port: number): Promise<{ seen: () => string[] }> {
  const lines: string[] = [];
  const script = `require('node:net').createServer((s) => { console.log('from ' + s.remoteAddress); s.end(); }).listen(${port}, '${addr}', () => console.log('ready'));`;
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  stops.push(() => child.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`server in ${ns} did not start`)), 10_000);
    child.stdout.on('data', (d: Buffer) => {
      for (const l of d.toString().split('\n')) {
        if (l === 'ready') {
          clearTimeout(t);
          resolve();
        } else if (l.startsWith('from ')) lines.push(l.slice(5));
      }
    });
    child.on('exit', (code) => reject(new Error(`server in ${ns} exited (${code})`)));
  });
  return { seen: () => lines };
}

async function dualStackPair(extra: string[]): Promise<[Host, Host]> {
  cluster = await Cluster.create(2, { routerArgs: ['--ipalloc-init', 'consensus=2', '--ipv6', ...extra] });
  const [a, b] = cluster.hosts;
  // The "outside": host b's uplink has an IPv6 address too (a's is reached through it).
  for (const h of [a, b])
    expect(
      (await run('ip', ['-n', h.ns, 'addr', 'add', `fd00:198:18::${h.index}/64`, 'dev', 'eth0', 'nodad'])).code,
    ).toBe(0);
  await a.launch();
  await b.launch([a.ip]);
  await eventually('connected', async () =>
    (await a.report<Report>()).connections.some((c) => c.state === 'established'),
  );
  return [a, b];
}

describeAsRoot('expose over IPv6', () => {
  it('routed: the host gets an address of each family; its subnet reaches the host and the outside with its own address; nothing opens a connection in; another subnet reaches nothing', async () => {
    // Containers' IPv6 subnet is a /64 by default here, so another /64 of the range is another subnet.
    const [a, b] = await dualStackPair(['--ipalloc-default-subnet6', 'fd77:6566:7400::/64']);
    const c1 = await cluster!.attached(a, 'c1');
    const c2 = await cluster!.attached(b, 'c2');
    const checks = async () => (await a.report<Report>()).datapath!.checks!.checks;
    const ex = await a.weft(['expose']);
    expect(ex.code, ex.stderr).toBe(0);
    // A check that starts after this (the new address sets one off; at worst the 30 s timer's).
    const checked = await checks();
    const [exposed4, exposed6] = ex.stdout.trim().split(' ');
    expect(exposed4).toMatch(/^10\.\d+\.\d+\.\d+\/12$/);
    expect(exposed6).toMatch(/^fd77:6566:7400:(:|0:)[0-9a-f:]*\/64$/); // in the default subnet, fd77:6566:7400::/64
    const host6 = exposed6.split('/')[0];
    expect((await a.weft(['status'])).stdout).toContain(exposed6);
    // The datapath's check leaves the exposed address on the bridge (it removes only a link-local one).
    await eventually('a check after the expose', async () => (await checks()) > checked, 40_000, 500);
    expect((await a.exec('ip', ['-6', 'addr', 'show', 'dev', 'weft'])).stdout).toContain(`inet6 ${exposed6}`);

    // The host reaches containers over IPv6, here and on the other host.
    await eventually(
      'host a pings c2 over IPv6',
      async () => (await a.exec('ping', ['-6', '-c', '1', '-W', '1', c2.ip6!])).code === 0,
    );
    // A container of the subnet reaches the host's address, never the router's ports.
    const hostServer = await whoConnects(a.ns, host6, 7401);
    await eventually('c1 reaches the host over IPv6', async () => (await tcpConnect(c1.ns, host6, 7401)) === 'open');
    expect(hostServer.seen()).toContain(c1.ip6);
    for (const port of [6783, 6784, 6782]) expect(await tcpConnect(c1.ns, host6, port, 1000)).toBe('closed timeout');

    // Out, routed: the outside sees the container's own address (it routes the subnet back to host a).
    expect((await run('ip', ['-n', c1.ns, '-6', 'route', 'add', 'fd00:198:18::/64', 'via', host6])).code).toBe(0);
    expect(
      (await run('ip', ['-n', b.ns, '-6', 'route', 'add', 'fd77:6566:7400::/48', 'via', 'fd00:198:18::1'])).code,
    ).toBe(0);
    const outside = await whoConnects(b.ns, 'fd00:198:18::2', 7402);
    await eventually(
      'c1 reaches the outside',
      async () => (await tcpConnect(c1.ns, 'fd00:198:18::2', 7402)) === 'open',
    );
    expect(outside.seen()).toContain(c1.ip6);
    // In: the outside cannot open a connection to the container, though it routes to it.
    await whoConnects(c1.ns, '::', 7403);
    const forward = async () => (await a.exec('nft', ['list', 'chain', 'inet', 'weft', 'forward'])).stdout;
    const rule = 'no new connections into exposed IPv6 subnets';
    const before = ruleCounter(await forward(), rule);
    expect(await tcpConnect(b.ns, c1.ip6!, 7403, 1500, 'fd00:198:18::2')).toBe('closed timeout');
    expect(ruleCounter(await forward(), rule)).toBeGreaterThan(before);

    // The DNS server's IPv6 address is a routable ULA: from a machine on the underlay that routes it
    // via host a (not host b: b has the address on its own bridge) it answers nothing, over UDP or TCP;
    // the firewall counts the drops.
    const stranger = await cluster!.stranger(1);
    for (const args of [
      ['addr', 'add', 'fd00:198:18::201/64', 'dev', 'eth0', 'nodad'],
      ['-6', 'route', 'add', 'fd77:6566:7453::53/128', 'via', 'fd00:198:18::1'],
    ])
      expect((await run('ip', ['-n', stranger.ns, ...args])).code).toBe(0);
    const dnsInput = async () =>
      ruleCounter(
        (await a.exec('nft', ['list', 'chain', 'inet', 'weft', 'input'])).stdout,
        "the DNS server's IPv6 address from outside",
      );
    const dnsBefore = await dnsInput();
    const query = await run('ip', [
      'netns',
      'exec',
      stranger.ns,
      process.execPath,
      '-e',
      `const r = new (require('node:dns').promises.Resolver)({ timeout: 1000, tries: 1 }); r.setServers(['[fd77:6566:7453::53]:53']);
       r.resolve4('one.weft.local').then(() => console.log('answered'), (e) => console.log(e.code));`,
    ]);
    expect(query.stdout.trim()).toBe('ETIMEOUT');
    expect(await tcpConnect(stranger.ns, 'fd77:6566:7453::53', 53, 1000)).toBe('closed timeout');
    expect(await dnsInput()).toBeGreaterThan(dnsBefore);

    // Another subnet: a container there, with a route to the host's address it made itself, is dropped
    // at the bridge (nothing of the host is exposed to it).
    const other = await cluster!.container('other');
    const att = await a.weft(['attach', '--subnet', 'fd77:6566:7400:1::/64', `netns:${other}`]);
    expect(att.code, att.stderr).toBe(0);
    expect((await run('ip', ['-n', other, '-6', 'route', 'add', `${host6}/128`, 'dev', 'ethwe'])).code).toBe(0);
    expect(await tcpConnect(other, host6, 7401, 1500)).toBe('closed timeout');
    const guard = (await a.exec('nft', ['list', 'chain', 'bridge', 'weft', 'input'])).stdout;
    expect(ruleCounter(guard, 'IPv6 to the host')).toBeGreaterThan(0);

    // A container on the other host, in another subnet, that addresses this host's bridge MAC itself
    // (over the overlay) to be routed out: dropped at the bridge as well.
    const remote = await cluster!.container('remote');
    const ra = await b.weft(['attach', '--subnet', 'fd77:6566:7400:2::/64', `netns:${remote}`]);
    expect(ra.code, ra.stderr).toBe(0);
    const aBridgeMac = JSON.parse((await a.exec('ip', ['-j', 'link', 'show', 'weft'])).stdout)[0].address as string;
    for (const args of [
      ['-6', 'neigh', 'replace', 'fd77:6566:7400:2::ffff', 'lladdr', aBridgeMac, 'dev', 'ethwe', 'nud', 'permanent'],
      ['-6', 'route', 'add', 'fd00:198:18::/64', 'via', 'fd77:6566:7400:2::ffff', 'dev', 'ethwe'],
    ])
      expect((await run('ip', ['-n', remote, ...args])).code).toBe(0);
    const dropped = async () =>
      ruleCounter((await a.exec('nft', ['list', 'chain', 'bridge', 'weft', 'input'])).stdout, 'IPv6 to the host');
    const droppedBefore = await dropped();
    expect(await tcpConnect(remote, 'fd00:198:18::2', 7402, 1500)).toBe('closed timeout');
    expect(await dropped()).toBeGreaterThan(droppedBefore);
    expect(outside.seen().some((x) => x.startsWith('fd77:6566:7400:2:'))).toBe(false);

    // Routed out (here over IPv4, masqueraded as host a), a container reaches no router's port of another host.
    expect((await run('ip', ['-n', c1.ns, 'route', 'add', '198.18.0.0/24', 'via', exposed4.split('/')[0]])).code).toBe(
      0,
    );
    expect(await tcpConnect(c1.ns, b.ip, 6783, 1500)).toBe('closed timeout');

    // The bridge deleted underneath: made again by the datapath's check, with the host's addresses of both families.
    expect((await a.exec('ip', ['link', 'del', 'weft'])).code).toBe(0);
    await eventually(
      'the bridge back with the exposed addresses',
      async () => {
        const shown = (await a.exec('ip', ['addr', 'show', 'dev', 'weft'])).stdout;
        return shown.includes(`inet ${exposed4}`) && shown.includes(`inet6 ${exposed6}`);
      },
      15_000,
      500,
    );

    // Hidden: the address goes from the bridge, and the subnet's containers reach the host no more.
    const hide = await a.weft(['hide']);
    expect(hide.stdout.trim().split(' ')).toEqual([exposed4, exposed6]);
    const left = (await a.exec('ip', ['-6', 'addr', 'show', 'dev', 'weft'])).stdout;
    expect(left).not.toContain(host6);
    expect(left).toContain('fd77:6566:7453::53/128'); // the DNS server's stays
    expect(await tcpConnect(c1.ns, host6, 7401, 1000)).not.toBe('open');
  }, 120_000);

  it('--ipv6-nat, and a gateway: attach --gateway gives a default route of each family; IPv6 leaves masqueraded as the host', async () => {
    const [a, b] = await dualStackPair(['--ipv6-nat']);
    const c = await cluster!.container('gw');
    const r = await a.weft(['attach', '--gateway', `netns:${c}`]);
    expect(r.code, r.stderr).toBe(0);
    const routes = (await run('ip', ['-n', c, '-6', 'route', 'show', 'default'])).stdout;
    const gw6 = /default via (\S+)/.exec(routes)?.[1];
    expect(gw6, routes).toMatch(/^fd77:6566:7400:/);
    expect((await a.exec('ip', ['-6', 'addr', 'show', 'dev', 'weft'])).stdout).toContain(`inet6 ${gw6}/48`);
    expect((await run('ip', ['-n', c, '-4', 'route', 'show', 'default'])).stdout).toMatch(/default via 10\./);
    const outside = await whoConnects(b.ns, 'fd00:198:18::2', 7404);
    await eventually(
      'the container reaches the outside over IPv6',
      async () => (await tcpConnect(c, 'fd00:198:18::2', 7404)) === 'open',
    );
    // No route back to the subnet is needed: the outside sees host a's own address.
    expect(outside.seen()).toContain('fd00:198:18::1');
  }, 120_000);
});
