// The kernel datapath across namespace hosts: bridge, attach, VXLAN fdb.
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { echo, echoServer } from '../harness/traffic.js';
import { run } from '../harness/exec.js';
import { readFileSync } from 'node:fs';

const FAST = ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'];
let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

async function twoHosts(extra: string[] = []): Promise<[Host, Host]> {
  cluster = await Cluster.create(2, { routerArgs: [...FAST, ...extra] });
  const [a, b] = cluster.hosts;
  await a.launch();
  await b.launch([a.ip]);
  // These tests are about the kernel path: both ends on it (heartbeats acknowledged), not the sleeve meanwhile.
  for (const h of [a, b])
    await eventually(`${h.nickname} on fastdp`, async () =>
      (await h.report<Report>()).connections.some((c) => c.state === 'established' && c.overlay === 'fastdp'),
    );
  return [a, b];
}

async function attach(h: Host, ns: string, ...cidrs: string[]): Promise<string> {
  const r = await h.weft(['attach', ...cidrs, `netns:${ns}`]);
  if (r.code !== 0) throw new Error(`attach on ${h.nickname}: ${r.stderr}`);
  return r.stdout.trim().split(' ')[0].split('/')[0];
}

describeAsRoot('fastdp across namespace hosts', () => {
  it('containers on two hosts exchange TCP and UDP; addresses come from IPAM; ps lists them', async () => {
    const [a, b] = await twoHosts();
    const c1 = await cluster!.container('c1');
    const c2 = await cluster!.container('c2');
    const ip1 = await attach(a, c1);
    const ip2 = await attach(b, c2);
    expect(ip1).not.toBe(ip2);
    const ps = await a.weft(['ps']);
    expect(ps.stdout).toMatch(new RegExp(`^netns:${c1} [0-9a-f:]{17} ${ip1.replaceAll('.', '\\.')}/12`));
    // Count ARP arriving over VXLAN on host B: with neighbour entries and neigh_suppress, there is none.
    await b.exec('nft', ['add', 'table', 'netdev', 'arpcount']);
    const bIndex = JSON.parse((await b.exec('ip', ['-json', 'link', 'show', 'vxlan-weft'])).stdout)[0].ifname as string;
    await b.exec('nft', [
      'add',
      'chain',
      'netdev',
      'arpcount',
      'in',
      `{ type filter hook ingress device ${bIndex} priority 0; }`,
    ]);
    await b.exec('nft', ['add', 'rule', 'netdev', 'arpcount', 'in', 'ether', 'type', 'arp', 'counter']);
    await eventually('A has a neighbour entry for c2', async () =>
      (await a.exec('ip', ['neigh', 'show', 'dev', 'weft', 'nud', 'permanent'])).stdout.includes(ip2),
    );
    const server = await echoServer(c2, 7000);
    try {
      await eventually(
        'TCP across hosts',
        async () => (await echo(c1, ip2, 7000, 'tcp', 100_000)) === 100_000,
        10_000,
        300,
      );
      expect(await echo(c1, ip2, 7000, 'udp', 1000)).toBe(1000);
    } finally {
      server.stop();
    }
    // ARP resolved, without ARP crossing to host B.
    const neigh = await run('ip', ['-n', c1, 'neigh', 'show', ip2]);
    expect(neigh.stdout).toMatch(/lladdr/);
    const arp = await b.exec('nft', ['list', 'table', 'netdev', 'arpcount']);
    expect(arp.stdout).toMatch(/counter packets 0 /);
    // The fdb on A points c2's MAC at B's underlay address.
    const rb = await b.report<Report>();
    const mac2 = rb.datapath!.localEndpoints[0].mac;
    const fdb = await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft']);
    expect(fdb.stdout).toContain(`${mac2} dst ${b.ip} self permanent`);
    expect(fdb.stdout).toContain(`${mac2} master weft static`);
    expect(fdb.stdout).toContain(`00:00:00:00:00:00 dst ${b.ip} self permanent`);
  });

  it('three hosts: traffic between every pair, broadcasts reach all; different subnets are isolated', async () => {
    cluster = await Cluster.create(3, { routerArgs: [...FAST.slice(0, 4), '--ipalloc-init', 'consensus=3'] });
    const [a, b, c] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    await c.launch([b.ip]);
    await eventually(
      'full mesh',
      async () => (await a.report<Report>()).connections.filter((x) => x.state === 'established').length === 2,
    );
    const ns = await Promise.all(['x1', 'x2', 'x3', 'iso'].map((l) => cluster!.container(l)));
    const ips = [
      await attach(a, ns[0], '10.33.0.1/16'),
      await attach(b, ns[1], '10.33.0.2/16'),
      await attach(c, ns[2], '10.33.0.3/16'),
    ];
    const isolated = await attach(c, ns[3], '10.34.0.1/16');
    const servers = await Promise.all(ns.map((n) => echoServer(n, 7100)));
    try {
      for (let i = 0; i < 3; i++) {
        for (let j = 0; j < 3; j++) {
          if (i === j) continue;
          await eventually(`x${i + 1} -> x${j + 1}`, async () => (await echo(ns[i], ips[j], 7100)) === 5, 10_000, 300);
        }
      }
      // A broadcast from x1 reaches the other two hosts' containers (ARP for an unused address is flooded).
      const bcast = await run('ip', [
        'netns',
        'exec',
        ns[0],
        process.execPath,
        '-e',
        `
        const u = require('node:dgram').createSocket('udp4');
        u.bind(() => { u.setBroadcast(true); u.send('hi', 7100, '10.33.255.255', () => {}); });
        const from = new Set(); u.on('message', (_m, r) => from.add(r.address));
        setTimeout(() => { console.log([...from].sort().join(' ')); process.exit(0); }, 2000);`,
      ]);
      const repliers = bcast.stdout.trim().split(' ');
      expect(repliers).toContain(ips[1]);
      expect(repliers).toContain(ips[2]);
      // 10.34.0.0/16 is another subnet: no route either way.
      await expect(echo(ns[0], isolated, 7100)).rejects.toThrow();
      await expect(echo(ns[3], ips[0], 7100)).rejects.toThrow();
    } finally {
      for (const s of servers) s.stop();
    }
  });

  it('expose lets the host reach containers and NATs them out; rules come back if flushed; hide and reset undo it all', async () => {
    const [a, b] = await twoHosts();
    const c1 = await cluster!.container('c1');
    const c2 = await cluster!.container('c2');
    await attach(a, c1);
    const ip2 = await attach(b, c2);
    const server = await echoServer(c2, 7200);
    try {
      await expect(echo(a.ns, ip2, 7200)).rejects.toThrow();
      const ex = await a.weft(['expose']);
      expect(ex.code, ex.stderr).toBe(0);
      const exposed = ex.stdout.trim().split('/')[0];
      expect((await a.weft(['status'])).stdout).toMatch(
        new RegExp(`host exposed as ${exposed.replaceAll('.', '\\.')}/12`),
      );
      await eventually('host A reaches c2 on host B', async () => (await echo(a.ns, ip2, 7200)) === 5, 10_000, 300);
      // NAT: c1 sends to host B's underlay address through A; B sees A's underlay address as the source.
      await run('ip', ['-n', c1, 'route', 'add', '198.18.0.0/24', 'via', exposed]);
      const listener = run('ip', [
        'netns',
        'exec',
        b.ns,
        process.execPath,
        '-e',
        `
        require('node:net').createServer((s) => { console.log(s.remoteAddress); process.exit(0); }).listen(7301, '198.18.0.2');
        setTimeout(() => { console.log('nothing'); process.exit(0); }, 6000);`,
      ]);
      await new Promise((r) => setTimeout(r, 500));
      await run('ip', [
        'netns',
        'exec',
        c1,
        process.execPath,
        '-e',
        `const s = require('node:net').connect(7301, '198.18.0.2', () => setTimeout(() => process.exit(0), 200)); s.on('error', () => process.exit(1));`,
      ]);
      expect((await listener).stdout.trim()).toBe(a.ip);
      // Rules flushed underneath come back, on the kernel's word (the check's own timer is 30 s).
      // `weft launch` starts the router with two malloc arenas and 2 MiB semi-spaces (lib/router-env.ts).
      const environ = readFileSync(`/proc/${a.routerPid()!}/environ`, 'utf8').split('\0');
      expect(environ).toContain('MALLOC_ARENA_MAX=2');
      expect(environ.find((e) => e.startsWith('NODE_OPTIONS='))).toMatch(/--max-semi-space-size=2\b/);
      const checks = async () => (await a.report<Report>()).datapath!.checks!;
      const before = await checks();
      expect(before).toMatchObject({ watching: true, notWatching: null });
      await a.exec('nft', ['flush', 'table', 'inet', 'weft']);
      // Within a few seconds (the notification's check comes 0.2-2 s after the change): not the timer's.
      await eventually(
        'firewall restored',
        async () => (await a.exec('nft', ['list', 'table', 'inet', 'weft'])).stdout.includes('masquerade'),
        5_000,
        250,
      );
      const after = await checks();
      expect(after.notified).toBeGreaterThan(before.notified);
      expect(after.checks).toBeGreaterThan(before.checks);
      const hide = await a.weft(['hide']);
      expect(hide.stdout.trim()).toBe(ex.stdout.trim());
      await expect(echo(a.ns, ip2, 7200)).rejects.toThrow();
      expect((await a.exec('nft', ['list', 'table', 'inet', 'weft'])).stdout).not.toContain('masquerade');
    } finally {
      server.stop();
    }
    const reset = await a.weft(['reset']);
    expect(reset.code, reset.stderr).toBe(0);
    expect((await a.exec('ip', ['link', 'show', 'weft'])).code, reset.stdout + reset.stderr).not.toBe(0);
    expect((await a.exec('ip', ['link', 'show', 'vxlan-weft'])).code).not.toBe(0);
    expect((await a.exec('nft', ['list', 'table', 'inet', 'weft'])).code, 'nft table').not.toBe(0);
  });

  it('repairs the bridge and VXLAN device when they are changed or deleted underneath', async () => {
    const [a, b] = await twoHosts();
    const c1 = await cluster!.container('c1');
    const c2 = await cluster!.container('c2');
    await attach(a, c1);
    const ip2 = await attach(b, c2);
    const server = await echoServer(c2, 7400);
    try {
      await eventually('TCP across', async () => (await echo(c1, ip2, 7400)) === 5, 10_000, 300);
      await a.exec('ip', ['link', 'del', 'vxlan-weft']);
      await a.exec('ip', ['link', 'set', 'weft', 'mtu', '1300']);
      await eventually('repaired and forwarding again', async () => (await echo(c1, ip2, 7400)) === 5, 20_000, 500);
      // The MTU may have been set after a check had already put the device back: the next puts it right.
      const mtu = (await a.report<Report>()).datapath!.mtu;
      await eventually(
        'the bridge MTU put back',
        async () => JSON.parse((await a.exec('ip', ['-json', 'link', 'show', 'weft'])).stdout)[0].mtu === mtu,
        20_000,
        500,
      );
      // Subtler changes, which the check (told of each by the kernel) sees without running ip: a port's flags, a port
      // off the bridge, the bridge's MAC, the VXLAN device's MTU.
      const mac = (await a.exec('cat', ['/sys/class/net/weft/address'])).stdout.trim();
      // The bridge has no IPv6 (so no host's link-local traffic floods over the overlay).
      const v6off = '/proc/sys/net/ipv6/conf/weft/disable_ipv6';
      expect((await a.exec('cat', [v6off])).stdout.trim()).toBe('1');
      expect((await a.exec('ip', ['-6', '-o', 'addr', 'show', 'dev', 'weft'])).stdout).toBe('');
      await a.exec('sh', ['-c', `echo 0 > ${v6off}`]);
      await a.exec('bridge', ['link', 'set', 'dev', 'weft-sleeve', 'learning', 'on']);
      await a.exec('ip', ['link', 'set', 'vxlan-weft', 'nomaster']);
      await a.exec('ip', ['link', 'set', 'weft', 'address', '02:00:00:00:00:01']);
      await a.exec('ip', ['link', 'set', 'weft-sleeve', 'mtu', '1280']);
      const sys = async (f: string) => (await a.exec('cat', [`/sys/class/net/${f}`])).stdout.trim();
      await eventually(
        'each put back',
        async () =>
          (await sys('weft-sleeve/brport/learning')) === '0' &&
          (await sys('weft-sleeve/mtu')) !== '1280' &&
          (await a.exec('readlink', ['/sys/class/net/vxlan-weft/master'])).stdout.trim().endsWith('/weft') &&
          (await sys('weft/address')) === mac &&
          (await a.exec('cat', [v6off])).stdout.trim() === '1',
        20_000,
        500,
      );
      await eventually('forwarding again', async () => (await echo(c1, ip2, 7400)) === 5, 20_000, 500);
    } finally {
      server.stop();
    }
  });

  it('status shows each connection as fastdp with its MTU, and (without the sleeve) says why there is no data path when UDP to the VXLAN port is blocked; a counting table or rule removed underneath is made again', async () => {
    const [a, b] = await twoHosts(['--no-sleeve']);
    const line = async () => (await a.weft(['status', 'connections'])).stdout.trim();
    await eventually('fastdp on A', async () => /established .* fastdp mtu=1450/.test(await line()), 10_000, 300);
    // Host B drops UDP to its VXLAN port: A's heartbeats stop arriving.
    await b.exec('nft', ['add', 'table', 'inet', 'blk']);
    await b.exec('nft', ['add', 'chain', 'inet', 'blk', 'in', '{ type filter hook input priority -300; }']);
    await b.exec('nft', ['add', 'rule', 'inet', 'blk', 'in', 'udp', 'dport', '6784', 'drop']);
    const blocked = await eventually(
      'A to say why',
      async () => {
        const l = await line();
        return /no data path: VXLAN heartbeats not arriving at the peer \(it said so \d+s ago; is UDP 6784 blocked/.test(
          l,
        )
          ? l
          : null;
      },
      10_000,
      300,
    );
    expect(blocked).not.toMatch(/fastdp mtu/);
    expect(blocked).toMatch(/no sleeve: turned off \(--no-sleeve\)/);
    const r = await a.report<Report>();
    expect(r.connections[0].overlay).toBe('none');
    await b.exec('nft', ['delete', 'table', 'inet', 'blk']);
    await eventually('fastdp again', async () => /fastdp mtu=1450/.test(await line()), 10_000, 300);
    // B's heartbeat counting table removed underneath (an administrator's `nft flush ruleset`, say),
    // then only A's rule in it: B makes it again at its next beat, and A's heartbeats count again.
    const hbRules = async () => {
      const r = await run('ip', ['netns', 'exec', b.ns, 'nft', '-a', '-j', 'list', 'table', 'netdev', 'weft_hb']);
      if (r.code !== 0) return null;
      return (
        JSON.parse(r.stdout) as {
          nftables: { rule?: { chain: string; handle: number; expr: { counter?: { packets: number } }[] } }[];
        }
      ).nftables.flatMap((o) => (o.rule ? [o.rule] : []));
    };
    const counting = async () => {
      const rules = await hbRules();
      return rules?.length === 1 && (rules[0].expr.find((e) => e.counter)?.counter?.packets ?? 0) > 0;
    };
    await b.exec('nft', ['delete', 'table', 'netdev', 'weft_hb']);
    await eventually('B to make its counting table again', counting, 10_000, 300);
    const [only] = (await hbRules())!;
    await b.exec('nft', ['delete', 'rule', 'netdev', 'weft_hb', only.chain, 'handle', String(only.handle)]);
    await eventually('B to make the rule again', counting, 10_000, 300);
    await eventually('fastdp still', async () => /fastdp mtu=1450/.test(await line()), 10_000, 300);
    // An underlay hop that cannot carry full-size overlay frames: the heartbeats (full MTU) say so.
    await run('ip', ['-n', cluster!.underlayNs, 'link', 'set', b.uplink, 'mtu', '1400']);
    await eventually(
      'A to notice the small path MTU',
      async () => /no data path: .*path MTU below 1500/.test(await line()),
      10_000,
      300,
    );
  });

  it('--mtu sets the overlay MTU on the bridge, the VXLAN device and containers; ethwe notifies ARP', async () => {
    cluster = await Cluster.create(1, { routerArgs: ['--ipalloc-init', 'consensus=1', '--mtu', '1400'] });
    const [a] = cluster.hosts;
    await a.launch();
    const c1 = await cluster.container('c1');
    await attach(a, c1);
    const mtu = async (args: string[]) => JSON.parse((await run('ip', ['-json', ...args])).stdout)[0].mtu as number;
    expect(await mtu(['-n', a.ns, 'link', 'show', 'weft'])).toBe(1400);
    expect(await mtu(['-n', a.ns, 'link', 'show', 'vxlan-weft'])).toBe(1400);
    expect(await mtu(['-n', c1, 'link', 'show', 'ethwe'])).toBe(1400);
    expect((await a.weft(['status'])).stdout).toMatch(/mtu 1400/);
    expect(
      (await run('ip', ['netns', 'exec', c1, 'cat', '/proc/sys/net/ipv4/conf/ethwe/arp_notify'])).stdout.trim(),
    ).toBe('1');
  });

  it('a full bridge: attach says so and leaves nothing behind (no veth, no address); with a port free it works', async () => {
    cluster = await Cluster.create(1, { routerArgs: ['--ipalloc-init', 'consensus=1'] });
    const [a] = cluster.hosts;
    await a.launch();
    // Fill the bridge to the kernel's limit with veths (weft's own ports are on it already): -force
    // goes on past the adds the full bridge refuses.
    const fill =
      Array.from({ length: 1030 }, (_, i) => `link add wfill${i} master weft type veth peer name wfpeer${i}`).join(
        '\n',
      ) + '\n';
    await run('ip', ['-n', a.ns, '-force', '-batch', '-'], { input: fill });
    expect(
      (JSON.parse((await a.exec('ip', ['-json', 'link', 'show', 'master', 'weft'])).stdout) as unknown[]).length,
    ).toBe(1023);
    const c1 = await cluster.container('c1');
    const r = await a.weft(['attach', `netns:${c1}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/bridge weft is full: a Linux bridge takes at most 1023 ports/);
    expect((await run('ip', ['-n', c1, 'link', 'show', 'ethwe'])).code).not.toBe(0);
    expect((await a.exec('ip', ['-o', 'link', 'show'])).stdout).not.toMatch(/: vw[0-9a-f]+[@:]/); // the container's host-side veth
    expect((await a.weft(['ipam', 'lookup', `netns:${c1}`])).stderr).toMatch(/no addresses/);
    await a.exec('ip', ['link', 'del', 'wfill0']);
    const ip1 = await attach(a, c1);
    expect(ip1).toMatch(/^10\./);
  });

  it("attach again when the container's ethwe is not our veth's other end: a conflict, and both left as they were", async () => {
    cluster = await Cluster.create(1, { routerArgs: ['--ipalloc-init', 'consensus=1'] });
    const [a] = cluster.hosts;
    await a.launch();
    const c1 = await cluster.container('c1');
    const away = await cluster.container('away');
    await attach(a, c1);
    const hostEnd = /: (vw[0-9a-f]+)@/.exec((await a.exec('ip', ['-o', 'link', 'show'])).stdout)![1];
    // Our end of the pair goes elsewhere, and the container gets an ethwe of its own.
    expect((await run('ip', ['-n', c1, 'link', 'set', 'ethwe', 'netns', away])).code).toBe(0);
    expect((await run('ip', ['-n', c1, 'link', 'add', 'ethwe', 'type', 'veth', 'peer', 'name', 'other0'])).code).toBe(
      0,
    );
    const r = await a.weft(['attach', `netns:${c1}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/an interface ethwe already exists/);
    expect((await run('ip', ['-n', c1, 'link', 'show', 'other0'])).code).toBe(0); // theirs (a pair in the container), left alone
    expect((await run('ip', ['-n', c1, 'link', 'show', 'ethwe'])).code).toBe(0);
    expect((await a.exec('ip', ['link', 'show', hostEnd])).code).toBe(0); // ours, as the router knows it
  });

  it("attach again after the container took another endpoint's MAC (or one another attach is taking): a conflict, nothing advertised", async () => {
    cluster = await Cluster.create(1, { routerArgs: ['--ipalloc-init', 'consensus=1'] });
    const [a] = cluster.hosts;
    await a.launch();
    const c1 = await cluster.container('c1');
    const c2 = await cluster.container('c2');
    await attach(a, c1);
    await attach(a, c2);
    const macs = async () =>
      new Map((await a.report<Report>()).datapath!.localEndpoints.map((e) => [e.container, e.mac]));
    const before = await macs();
    const mac1 = before.get(`netns:${c1}`)!;
    expect((await run('ip', ['-n', c2, 'link', 'set', 'ethwe', 'address', mac1])).code).toBe(0);
    const r = await a.weft(['attach', `netns:${c2}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`which is netns:${c1}'s on this host`);
    expect(await macs()).toEqual(before); // c2 is still advertised with its own MAC
    // Two re-attaches at once with one new MAC: only one of them gets it.
    const c3 = await cluster.container('c3');
    await attach(a, c3);
    const twin = '02:77:77:77:77:77';
    for (const c of [c2, c3])
      expect((await run('ip', ['-n', c, 'link', 'set', 'ethwe', 'address', twin])).code).toBe(0);
    const both = await Promise.all([c2, c3].map((c) => a.weft(['attach', `netns:${c}`])));
    expect(both.filter((x) => x.code === 0)).toHaveLength(1);
    expect([...(await macs()).values()].filter((m) => m === twin)).toHaveLength(1);
    // With a MAC of its own again, the re-attach goes through.
    expect((await run('ip', ['-n', c2, 'link', 'set', 'ethwe', 'address', before.get(`netns:${c2}`)!])).code).toBe(0);
    expect((await a.weft(['attach', `netns:${c2}`])).code).toBe(0);
  });

  it('detach frees the address and removes the fdb entries on the other host', async () => {
    const [a, b] = await twoHosts();
    const c1 = await cluster!.container('c1');
    const c2 = await cluster!.container('c2');
    await attach(a, c1);
    const ip2 = await attach(b, c2, '10.32.5.5/12');
    expect(ip2).toBe('10.32.5.5');
    const mac2 = (await b.report<Report>()).datapath!.localEndpoints[0].mac;
    await eventually('A programs c2', async () =>
      (await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft'])).stdout.includes(mac2),
    );
    const d = await b.weft(['detach', `netns:${c2}`]);
    expect(d.code, d.stderr).toBe(0);
    expect((await b.weft(['ipam', 'lookup', `netns:${c2}`])).stderr).toMatch(/no addresses/);
    await eventually(
      'A forgets c2',
      async () => !(await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft'])).stdout.includes(mac2),
    );
    await eventually(
      'and its neighbour entry',
      async () => !(await a.exec('ip', ['neigh', 'show', 'dev', 'weft', 'nud', 'permanent'])).stdout.includes(ip2),
    );
    expect((await run('ip', ['-n', c2, 'link', 'show', 'ethwe'])).code).not.toBe(0);
  });

  it('an address freed and given to a new container is reachable at once from a container elsewhere that knew the old one', async () => {
    const [a, b] = await twoHosts();
    const old = await cluster!.container('old');
    const client = await cluster!.container('client');
    const ip = await attach(a, old, '10.32.7.7/12');
    await attach(b, client);
    await eventually(
      'client pings the first holder',
      async () => (await run('ip', ['netns', 'exec', client, 'ping', '-c', '1', '-W', '1', ip])).code === 0,
      10_000,
      100,
    );
    expect((await a.weft(['detach', `netns:${old}`])).code).toBe(0);
    const fresh = await cluster!.container('fresh');
    expect(await attach(a, fresh, '10.32.7.7/12')).toBe(ip);
    // The client's ARP entry still names the old MAC (ARP does not cross hosts: the bridges answer it);
    // without weft telling the client's host, the new holder stays unreachable until that entry ages out
    // (30 s and more), far longer than this wait.
    await eventually(
      'client pings the new holder',
      async () => (await run('ip', ['netns', 'exec', client, 'ping', '-c', '1', '-W', '1', ip])).code === 0,
      5000,
      100,
    );
    const freshMac = JSON.parse((await run('ip', ['-n', fresh, '-json', 'link', 'show', 'ethwe'])).stdout)[0]
      .address as string;
    expect((await run('ip', ['netns', 'exec', client, 'ip', 'neigh', 'show', ip])).stdout).toContain(freshMac);
  });

  it('a restarted router keeps attached containers working and leaves no stale fdb entry', async () => {
    const [a, b] = await twoHosts();
    const c1 = await cluster!.container('c1');
    const c2 = await cluster!.container('c2');
    const c3 = await cluster!.container('c3');
    await attach(a, c1);
    const ip2 = await attach(b, c2);
    await attach(b, c3);
    const mac3 = (await b.report<Report>()).datapath!.localEndpoints.find((e) => e.container === `netns:${c3}`)!.mac;
    const server = await echoServer(c2, 7001);
    try {
      await eventually('TCP across', async () => (await echo(c1, ip2, 7001)) === 5, 10_000, 300);
      await b.kill();
      // The kernel keeps forwarding while B's router is down.
      expect(await echo(c1, ip2, 7001)).toBe(5);
      await run('ip', ['netns', 'del', c3]); // a container that goes away while the router is down
      // Pings every 20 ms through B's start: the kernel keeps forwarding while the new router takes
      // over: its firewall and fdb keep what the kernel had until the peers are back, and A keeps B on
      // fastdp while B's heartbeats resume (before, about 200 ms were lost).
      const pings = run('ip', ['netns', 'exec', c1, 'ping', '-c', '300', '-i', '0.02', '-W', '1', ip2], {
        timeoutMs: 20_000,
      });
      await new Promise((r) => setTimeout(r, 500));
      await b.launch([a.ip]);
      const out = (await pings).stdout;
      const received = Number(/(\d+) received/.exec(out)?.[1] ?? 0);
      expect(300 - received, out.split('\n').slice(-3).join('\n')).toBeLessThanOrEqual(2);
      await eventually(
        "A drops c3's MAC after B comes back",
        async () => !(await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft'])).stdout.includes(mac3),
        20_000,
      );
      expect(await echo(c1, ip2, 7001)).toBe(5);
      const ps = await b.weft(['ps']);
      expect(ps.stdout).toContain(`netns:${c2}`);
      expect(ps.stdout).not.toContain(`netns:${c3}`);
    } finally {
      server.stop();
    }
  });
});
