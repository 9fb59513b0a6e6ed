// The OVS datapath across namespace hosts: each host runs its own Open vSwitch
// (userspace netdev datapath, test/harness/ovs.ts) and weft is the OpenFlow
// controller of its bridge. Checked with traffic and with the switch's own
// state (ovs-ofctl dump-flows, ovs-vsctl), not with weft's word for it.
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { echo, echoServer } from '../harness/traffic.js';
import { must, run } from '../harness/exec.js';
import { ovsInstalled } from '../harness/ovs.js';
import { injectOverlayFrames, udpRecorder } from '../harness/attacker.js';

const FAST = ['--heartbeat-interval', '500ms', '--gossip-interval', '1s'];
let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

async function attach(
  h: Host,
  ns: string,
  ...groups: string[]
): Promise<{ ip: string; ip6?: string; mac: string; broadcast: string }> {
  const r = await h.weft(['attach', ...groups.flatMap((g) => ['--group', g]), `netns:${ns}`]);
  if (r.code !== 0) throw new Error(`attach on ${h.nickname}: ${r.stderr}`);
  const [ip, prefix] = r.stdout.trim().split(' ')[0].split('/');
  const n = ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(prefix));
  const b = n - (n % size) + size - 1;
  const broadcast = [24, 16, 8, 0].map((sh) => Math.floor(b / 2 ** sh) % 256).join('.');
  const link = JSON.parse((await run('ip', ['-n', ns, '-json', 'link', 'show', 'ethwe'])).stdout) as {
    address: string;
  }[];
  const ip6 = r.stdout.trim().split(' ')[1]?.split('/')[0]; // with --ipv6
  return { ip, ...(ip6 ? { ip6 } : {}), mac: link[0].address, broadcast };
}

async function overlays(h: Host): Promise<string[]> {
  return (await h.report<Report>()).connections.filter((c) => c.state === 'established').map((c) => c.overlay ?? '');
}

/** Hosts launched in a chain, once every connection carries data over the expected overlay. */
async function launch(c: Cluster, expect: (h: Host) => string): Promise<Host[]> {
  for (const h of c.hosts) await h.launch(c.hosts.slice(0, h.index - 1).map((x) => x.ip));
  for (const h of c.hosts) {
    await eventually(
      `${h.nickname}: every connection on ${expect(h)}`,
      async () => {
        const o = await overlays(h);
        return o.length === c.hosts.length - 1 && o.every((x) => x === expect(h));
      },
      20_000,
      200,
    );
  }
  return c.hosts;
}

async function ping(ns: string, ip: string): Promise<boolean> {
  return (await run('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-W', '2', ip])).code === 0;
}

const flowsFor = (flows: string[], mac: string) => flows.filter((f) => f.includes(mac));

/** Waits until every one of the host's `n` connections carries data on OVS. */
async function allOnOvs(h: Host, n: number, what: string): Promise<void> {
  await eventually(
    what,
    async () => {
      const o = await overlays(h);
      return o.length === n && o.every((x) => x === 'ovs');
    },
    20_000,
    200,
  );
}

/** The addresses that answer a UDP broadcast to `broadcast`:7101 from a container, sorted. */
async function broadcastAnswers(ns: string, broadcast: string, waitMs = 2000): Promise<string[]> {
  const r = await run('ip', [
    'netns',
    'exec',
    ns,
    process.execPath,
    '-e',
    `const u = require('node:dgram').createSocket('udp4');
     u.bind(() => { u.setBroadcast(true); u.send('hi', 7101, '${broadcast}', () => {}); });
     const from = new Set(); u.on('message', (_m, r) => from.add(r.address));
     setTimeout(() => { console.log([...from].sort().join(' ')); process.exit(0); }, ${waitMs});`,
  ]);
  return r.stdout.trim().split(' ').filter(Boolean).sort();
}

const describeOvs =
  ovsInstalled() || process.env.CI
    ? describeAsRoot
    : (name: string, fn: () => void) =>
        describeAsRoot(`${name} (needs openvswitch-switch: skipped)`, () =>
          it.skip('openvswitch-switch is not installed', fn),
        );

describeOvs('the OVS datapath across namespace hosts', () => {
  it("three hosts: ping, TCP and broadcast across; flows per container; a detached container's flows gone on every host; status says ovs", async () => {
    // Dual-stack containers (--ipv6): IPv6 crosses OVS too.
    cluster = await Cluster.create(3, {
      routerArgs: [...FAST, '--ipalloc-init', 'consensus=3', '--ipv6'],
      ovs: true,
    });
    const [a, b, c] = await launch(cluster, () => 'ovs');
    const ns = await Promise.all(['x1', 'x2', 'x3'].map((l) => cluster!.container(l)));
    const x = [await attach(a, ns[0]), await attach(b, ns[1]), await attach(c, ns[2])];

    const status = await a.weft(['status']);
    expect(status.stdout).toMatch(/Datapath: ovs \(OVS bridge weft-ovs, netdev datapath, controller connected\)/);
    expect((await a.weft(['status', 'connections'])).stdout).toMatch(/ ovs mtu=/);
    expect(await a.ovs!.vsctl(['get', 'bridge', 'weft-ovs', 'fail_mode'])).toMatch(/secure/);

    for (let i = 0; i < 3; i++)
      for (let j = 0; j < 3; j++)
        if (i !== j) await eventually(`ping x${i + 1} -> x${j + 1}`, () => ping(ns[i], x[j].ip), 10_000, 200);
    const server = await echoServer(ns[2], 7000);
    try {
      expect(await echo(ns[0], x[2].ip, 7000, 'tcp', 200_000)).toBe(200_000);
      expect(x[2].ip6).toMatch(/^fd77:6566:7400:/);
      await eventually(
        'x1 -> x3 over IPv6',
        async () => (await echo(ns[0], x[2].ip6!, 7000).catch(() => 0)) === 5,
        10_000,
      );
      expect(await echo(ns[0], x[2].ip6!, 7000, 'tcp', 200_000)).toBe(200_000);
      expect(await echo(ns[1], x[2].ip, 7000, 'udp', 1000)).toBe(1000);
    } finally {
      server.stop();
    }
    // ARP was answered: each container has its peers' MACs.
    expect((await run('ip', ['-n', ns[0], 'neigh', 'show', x[1].ip])).stdout).toContain(x[1].mac);

    // A broadcast from x1 reaches the containers on the two other hosts (their echo servers answer).
    const echoes = await Promise.all([ns[1], ns[2]].map((n) => echoServer(n, 7101)));
    try {
      expect(await broadcastAnswers(ns[0], x[0].broadcast)).toEqual([x[1].ip, x[2].ip].sort());
    } finally {
      echoes.forEach((s) => s.stop());
    }

    // Flows, as OVS has them: on host 2, x1's MAC goes to host 1 through the tunnel; on host 1 it is delivered locally.
    const onB = await b.ovs!.flows('weft-ovs');
    expect(flowsFor(onB, x[0].mac).join('\n')).toMatch(
      new RegExp(`dl_dst=${x[0].mac}.*set_field:${a.ip.replaceAll('.', '\\.')}->tun_dst`),
    );
    const onA = await a.ovs!.flows('weft-ovs');
    expect(flowsFor(onA, x[0].mac).join('\n')).toMatch(/actions=output:1/);

    // Detach x1: its flows go on every host.
    const d = await a.weft(['detach', `netns:${ns[0]}`]);
    expect(d.code, d.stderr).toBe(0);
    for (const h of [a, b, c])
      await eventually(
        `${h.nickname} has no flow for x1's MAC`,
        async () => flowsFor(await h.ovs!.flows('weft-ovs'), x[0].mac).length === 0,
        5000,
        100,
      );
    // The others keep theirs.
    const left = await a.ovs!.flows('weft-ovs');
    expect(flowsFor(left, x[1].mac).length, left.join('\n')).toBe(1);
  });

  it('a killed router: traffic keeps flowing through the installed flows; restarted, it changes only what changed meanwhile; a bridge deleted underneath is made again', async () => {
    cluster = await Cluster.create(3, { routerArgs: [...FAST, '--ipalloc-init', 'consensus=3'], ovs: true });
    const [a, b, c] = await launch(cluster, () => 'ovs');
    const ns = await Promise.all(['y1', 'y2', 'y3'].map((l) => cluster!.container(l)));
    const y = [await attach(a, ns[0]), await attach(b, ns[1]), await attach(c, ns[2])];
    await eventually('y2 -> y3', () => ping(ns[1], y[2].ip), 10_000, 200);
    await eventually('y2 -> y1', () => ping(ns[1], y[0].ip), 10_000, 200);
    // Pings get through by flooding before host 2's router has programmed the unicast flows: the
    // snapshot is taken once it has both (else the restart below "adds" one and the comparison fails).
    await eventually(
      "host 2's flows for y1 and y3",
      async () => {
        const f = await b.ovs!.flows('weft-ovs');
        return flowsFor(f, y[0].mac).length === 1 && flowsFor(f, y[2].mac).length === 1;
      },
      10_000,
      100,
    );
    const before = await b.ovs!.flows('weft-ovs');

    await b.kill();
    // Pings every 50 ms across host 2's switch while its router is gone.
    const pinging = run('ip', ['netns', 'exec', ns[1], 'ping', '-c', '60', '-i', '0.05', '-W', '1', y[2].ip], {
      timeoutMs: 30_000,
    });
    // Meanwhile y1 leaves host 1: host 2's flow for it is stale until its router is back.
    expect((await a.weft(['detach', `netns:${ns[0]}`])).code).toBe(0);
    const p = await pinging;
    expect(p.stdout).toMatch(/60 packets transmitted, 60 received/);
    expect(flowsFor(await b.ovs!.flows('weft-ovs'), y[0].mac).length).toBe(1); // nobody removed it: the router is down

    await b.launch([a.ip]);
    await eventually(
      'the restarted router removed the stale flow',
      async () => flowsFor(await b.ovs!.flows('weft-ovs'), y[0].mac).length === 0,
      10_000,
      100,
    );
    await allOnOvs(b, 2, 'host 2 back on ovs with both peers');
    // Nothing missing: every flow from before is there again, except y1's.
    const after = await b.ovs!.flows('weft-ovs');
    const strip = (f: string) => f.replace(/duration=[^,]+, /, '');
    expect(after.map(strip).sort()).toEqual(
      before
        .filter((f) => !f.includes(y[0].mac))
        .map(strip)
        .sort(),
    );
    // (OVS's datapath runs in userspace here: on a loaded machine the first echo can take its time.)
    await eventually('y2 -> y3 after the restart', () => ping(ns[1], y[2].ip), 10_000, 200);
    const r = await b.report<Report>();
    expect(r.datapath!.kind).toBe('ovs');
    expect(r.datapath!.ovs!.connected).toBe(true);

    // The bridge deleted underneath: the router makes it again, with its flows, and traffic returns.
    await b.ovs!.vsctl(['del-br', 'weft-ovs']);
    await eventually(
      'bridge and flows back',
      async () =>
        (await b.ovs!.vsctl(['list-br'])).includes('weft-ovs') &&
        flowsFor(await b.ovs!.flows('weft-ovs'), y[2].mac).length === 1,
      15_000,
      200,
    );
    await eventually('y2 -> y3 again', () => ping(ns[1], y[2].ip), 10_000, 200);
  });

  it('a mixed mesh: a host on the kernel VXLAN datapath and one on OVS carry traffic both ways, through a service VIP too, with security groups enforced; weft reset removes only the OVS bridge weft made', async () => {
    cluster = await Cluster.create(2, { routerArgs: [...FAST, '--ipalloc-init', 'consensus=2'], ovs: [2] });
    const [a, b] = await launch(cluster, (h) => (h.index === 1 ? 'fastdp' : 'ovs'));
    const ns = await Promise.all(['z1', 'z2', 'web'].map((l) => cluster!.container(l)));
    const z = [await attach(a, ns[0]), await attach(b, ns[1], 'db')];
    await eventually('z1 -> z2', () => ping(ns[0], z[1].ip), 10_000, 200);
    expect(await ping(ns[1], z[0].ip)).toBe(true);
    const server = await echoServer(ns[0], 7000);
    const dbServer = await echoServer(ns[1], 7000);
    try {
      expect(await echo(ns[1], z[0].ip, 7000, 'tcp', 200_000)).toBe(200_000);
      // A service whose backend sits behind OVS, reached from the kernel VXLAN host.
      const created = await a.weft(['service', 'create', 'db', '--group', 'db']);
      expect(created.code, created.stderr).toBe(0);
      const vip = created.stdout.split(' ')[1];
      await eventually(
        'the VIP answers from z1',
        async () => (await echo(ns[0], vip, 7000).catch(() => 0)) === 5,
        10_000,
        200,
      );
      // Security groups: db admits tcp 7000 from web only; z1 is not in web, a new container is.
      expect(
        (await a.weft(['policy', 'allow', '--to', 'db', '--from', 'web', '--proto', 'tcp', '--port', '7000'])).code,
      ).toBe(0);
      await eventually(
        'z1 denied at z2',
        async () => (await echo(ns[0], z[1].ip, 7000, 'tcp', 5, 1000).catch(() => 0)) === 0,
        10_000,
        200,
      );
      const web = await attach(a, ns[2], 'web');
      expect(web.ip).not.toBe(z[0].ip);
      await eventually(
        'web allowed at z2',
        async () => (await echo(ns[2], z[1].ip, 7000).catch(() => 0)) === 5,
        10_000,
        200,
      );
    } finally {
      server.stop();
      dbServer.stop();
    }
    const reset = await b.weft(['reset']);
    expect(reset.code, reset.stderr).toBe(0);
    expect(reset.stdout).toMatch(/and the OVS bridge weft-ovs with its flows/);
    const bridges = (await b.ovs!.vsctl(['list-br'])).trim().split('\n');
    expect(bridges).toEqual(['br-phy']);
  });

  it('VXLAN blocked on the underlay: the connection falls back to the sleeve, says why, and returns to ovs when unblocked', async () => {
    cluster = await Cluster.create(2, { routerArgs: [...FAST, '--ipalloc-init', 'consensus=2'], ovs: true });
    const [a, b] = await launch(cluster, () => 'ovs');
    const ns = await Promise.all(['s1', 's2'].map((l) => cluster!.container(l)));
    const s = [await attach(a, ns[0]), await attach(b, ns[1])];
    await eventually('s1 -> s2', () => ping(ns[0], s[1].ip), 10_000, 200);
    // OVS reads the underlay before the hosts' netfilter does: block VXLAN on the underlay's bridge instead.
    const ul = cluster.underlayNs;
    await must('ip', ['netns', 'exec', ul, 'nft', '-f', '-'], {
      input:
        'table bridge weft_test_block {\n chain f {\n  type filter hook forward priority 0;\n  udp dport 6784 drop\n }\n}\n',
    });
    await eventually('on the sleeve', async () => (await overlays(a)).every((o) => o === 'sleeve'), 15_000, 200);
    expect((await a.weft(['status', 'connections'])).stdout).toMatch(
      /not ovs: VXLAN heartbeats not arriving at the peer/,
    );
    await eventually('s1 -> s2 over the sleeve', () => ping(ns[0], s[1].ip), 10_000, 200);
    expect(flowsFor(await a.ovs!.flows('weft-ovs'), s[1].mac)).toEqual([]); // its MAC went to the sleeve's port
    await must('ip', ['netns', 'exec', ul, 'nft', 'delete', 'table', 'bridge', 'weft_test_block']);
    await eventually('back on ovs', async () => (await overlays(a)).every((o) => o === 'ovs'), 15_000, 200);
    expect(flowsFor(await a.ovs!.flows('weft-ovs'), s[1].mac)).toHaveLength(1);
    await eventually('s1 -> s2 back on ovs', () => ping(ns[0], s[1].ip), 10_000, 200);
  });

  it("an IPv6-only underlay: the OVS tunnel reaches peers over IPv6 (tun_ipv6_dst), both overlay families cross at the MTU VXLAN over IPv6 leaves, a stranger's VXLAN over IPv6 is not taken", async () => {
    cluster = await Cluster.create(2, {
      routerArgs: [...FAST, '--ipalloc-init', 'consensus=2', '--ipv6'],
      ovs: true,
    });
    const [a, b] = cluster.hosts;
    // The underlay address lives on br-phy (test/harness/ovs.ts): IPv6 there instead of IPv4.
    for (const h of cluster.hosts) {
      await must('ip', ['-n', h.ns, 'addr', 'flush', 'dev', 'br-phy']);
      await must('ip', ['-n', h.ns, 'addr', 'add', `fd00:198:18::${h.index}/64`, 'dev', 'br-phy', 'nodad']);
      await must('ip', ['netns', 'exec', h.ns, 'sysctl', '-qw', 'net.ipv6.conf.eth0.disable_ipv6=1']);
    }
    await a.launch([], ['--host', 'fd00:198:18::1']);
    await b.launch(['[fd00:198:18::1]:6783'], ['--host', 'fd00:198:18::2']);
    for (const h of [a, b]) await allOnOvs(h, 1, `${h.nickname} on ovs`);
    const ns = await Promise.all(['y1', 'y2'].map((l) => cluster!.container(l)));
    const y = [await attach(a, ns[0]), await attach(b, ns[1])];
    // 1500 on the underlay, less VXLAN over IPv6's 70 bytes.
    expect((await run('ip', ['-n', ns[0], '-json', 'link', 'show', 'ethwe'])).stdout).toContain('"mtu":1430');
    await eventually('ping y1 -> y2', () => ping(ns[0], y[1].ip), 10_000, 200);
    const server = await echoServer(ns[1], 7000);
    try {
      expect(await echo(ns[0], y[1].ip, 7000, 'tcp', 200_000)).toBe(200_000);
      expect(await echo(ns[0], y[1].ip6!, 7000, 'tcp', 200_000)).toBe(200_000);
      // Full-size datagrams: the MTU holds (no fragment lost to an outer packet too big).
      expect(await echo(ns[0], y[1].ip, 7000, 'udp', 1402)).toBe(1402);
    } finally {
      server.stop();
    }
    const onA = await a.ovs!.flows('weft-ovs');
    expect(flowsFor(onA, y[1].mac).join('\n')).toMatch(/set_field:fd00:198:18::2->tun_ipv6_dst/);
    expect(onA.join('\n')).toMatch(/priority=500,tun_ipv6_src=fd00:198:18::2,in_port=2 actions=goto_table:1/);

    // VXLAN over IPv6 is taken from the peer's IPv6 address only: one admit flow, and the tunnel's
    // catch-all drop below it (as for IPv4 sources).
    expect(onA.filter((f) => f.includes('goto_table:1'))).toHaveLength(1);
    expect(onA.join('\n')).toMatch(/priority=450,in_port=2 actions=drop/);
    // A stranger on the underlay sends VXLAN over IPv6 to a container: nothing reaches it. From the
    // peer's address (spoofed) the same datagrams do arrive: they were well-formed, and only the
    // source kept them out (as on the kernel path without a password).
    const stranger = await cluster.stranger(1);
    await must('ip', ['-n', stranger.ns, 'addr', 'add', 'fd00:198:18::201/64', 'dev', 'eth0', 'nodad']);
    // Full UDP checksums, as a real NIC sends them (OVS's tunnel end drops partial ones).
    await must('ip', ['netns', 'exec', stranger.ns, 'ethtool', '-K', 'eth0', 'tx', 'off']);
    const recorder = await udpRecorder(ns[0], 9999);
    const inject = (tag: string, from?: string) =>
      injectOverlayFrames({
        ns: stranger.ns,
        host: 'fd00:198:18::1',
        container: { mac: y[0].mac, ip: y[0].ip },
        hop: 'unused',
        dst: 'unused',
        tag,
        ...(from ? { from } : {}),
      });
    try {
      await inject('from a stranger');
      await new Promise((r) => setTimeout(r, 1000));
      expect(recorder.received()).toEqual([]);
      await cluster.borrow(stranger.ns, 'fd00:198:18::2');
      await inject('spoofed', 'fd00:198:18::2');
      await eventually(
        'the spoofed VXLAN datagrams arrive',
        async () => recorder.received().some((d) => d.data === 'vxlan spoofed'),
        5000,
        100,
      );
      expect(recorder.received().every((d) => d.data.endsWith('spoofed'))).toBe(true);
    } finally {
      recorder.stop();
    }
  });

  it('a mixed underlay: a dual-stack host floods to an IPv4 peer and an IPv6 peer in one flow, and each gets its copy', async () => {
    cluster = await Cluster.create(3, { routerArgs: [...FAST, '--ipalloc-init', 'consensus=3'], ovs: true });
    const [a, b, c] = cluster.hosts;
    // a: both families on br-phy; b: IPv6 only; c: IPv4 only (as the harness made it).
    await must('ip', ['-n', a.ns, 'addr', 'add', 'fd00:198:18::1/64', 'dev', 'br-phy', 'nodad']);
    await must('ip', ['-n', b.ns, 'addr', 'flush', 'dev', 'br-phy']);
    await must('ip', ['-n', b.ns, 'addr', 'add', 'fd00:198:18::2/64', 'dev', 'br-phy', 'nodad']);
    for (const h of [a, b])
      await must('ip', ['netns', 'exec', h.ns, 'sysctl', '-qw', 'net.ipv6.conf.eth0.disable_ipv6=1']);
    await a.launch([], ['--host', '::']);
    await b.launch(['[fd00:198:18::1]:6783'], ['--host', 'fd00:198:18::2']);
    await c.launch([a.ip]);
    await allOnOvs(a, 2, 'a reaches both on ovs');
    const ns = await Promise.all(['m1', 'm2', 'm3'].map((l) => cluster!.container(l)));
    const m = [await attach(a, ns[0]), await attach(b, ns[1]), await attach(c, ns[2])];
    const flood = (await a.ovs!.flows('weft-ovs')).find((f) => f.includes('priority=50,')) ?? '';
    expect(flood).toContain('set_field:0.0.0.0->tun_dst,set_field:fd00:198:18::2->tun_ipv6_dst');
    expect(flood).toContain(`set_field:::->tun_ipv6_dst,set_field:${c.ip}->tun_dst`);
    // A broadcast from a's container: one copy over IPv6 to b, one over IPv4 to c (their echo servers answer).
    await eventually(
      'm1 reaches m2 and m3',
      async () => (await ping(ns[0], m[1].ip)) && (await ping(ns[0], m[2].ip)),
      15_000,
      200,
    );
    const echoes = await Promise.all([ns[1], ns[2]].map((n) => echoServer(n, 7101)));
    try {
      await eventually(
        'both answer the broadcast',
        async () =>
          JSON.stringify(await broadcastAnswers(ns[0], m[0].broadcast, 1500)) ===
          JSON.stringify([m[1].ip, m[2].ip].sort()),
        15_000,
        200,
      );
    } finally {
      echoes.forEach((x) => x.stop());
    }
  });

  it('without Open vSwitch running, launch fails at once and says what is missing', async () => {
    cluster = await Cluster.create(1, { routerArgs: FAST });
    const [a] = cluster.hosts;
    const r = await a.weft(
      ['launch', '--no-docker', '--datapath', 'ovs', '--ovsdb', `unix:${cluster.workDir}/nothing/db.sock`],
      { timeoutMs: 40_000 },
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/cannot reach ovsdb-server at unix:.*nothing\/db\.sock.*is Open vSwitch running/);
  });
});
