// The CNI plugin, run as a runtime runs it (config on stdin, CNI_* in the environment): the static
// binary `weft setup-cni` installs (native/weft-cni.c), and the Node one of the npm package.
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { projectRoot } from '../../lib/project-root.js';
import type { Report } from '../../router/contract.js';
import { hostIfName } from '../../datapath/attach.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { echo, echoServer } from '../harness/traffic.js';

const BINARY = join(projectRoot(), 'native', 'build', 'weft-cni');
const NODE_PLUGIN = join(projectRoot(), 'dist', 'cli', 'weft-cni.js');
const conf = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: '1.1.0', name: 'weft', type: 'weft-cni', dnsDomain: 'weft.local', ...extra });
let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

interface Call {
  command: string;
  id?: string;
  netns?: string;
  config?: string;
  env?: NodeJS.ProcessEnv;
  node?: boolean;
}

/** Runs the plugin in a host's namespace, as the runtime would; its exit code and its stdout as JSON. */
async function cni(h: Host, c: Call) {
  const cmd = c.node ? [process.execPath, NODE_PLUGIN] : [BINARY];
  const r = await run('ip', ['netns', 'exec', h.ns, ...cmd], {
    input: c.config ?? conf(),
    env: {
      PATH: process.env.PATH,
      CNI_COMMAND: c.command,
      CNI_CONTAINERID: c.id ?? '',
      CNI_NETNS: c.netns ?? '',
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/opt/cni/bin',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web-0',
      ...c.env,
    },
    timeoutMs: 60_000,
  });
  return { code: r.code, out: r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, unknown>) : null };
}

interface AddResult {
  cniVersion: string;
  interfaces: { name: string; mac: string; sandbox?: string; mtu?: number }[];
  ips: { address: string; gateway?: string; interface: number; version?: string }[];
  routes: { dst: string; gw?: string }[];
  dns: { nameservers: string[]; search: string[] };
}

describeAsRoot('CNI plugin', () => {
  it('ADD: an address, the host as gateway (NAT out, the host reaches the pod, hairpin), a DNS name; CHECK against prevResult; DEL, also with the router down', async () => {
    cluster = await Cluster.create(2, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
    });
    const [a, b] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    expect((await cni(a, { command: 'VERSION', config: '{"cniVersion":"1.0.0"}' })).out).toEqual({
      cniVersion: '1.0.0',
      supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'],
    });
    const pod = await cluster.container('pod');
    const netns = `/var/run/netns/${pod}`;
    const added = await cni(a, { command: 'ADD', id: 'c0ffee01', netns });
    expect(added.code, JSON.stringify(added.out)).toBe(0);
    const res = added.out as unknown as AddResult;
    // The host side is listed too (chained plugins such as bandwidth need it), then the pod's.
    expect(res.interfaces).toHaveLength(2);
    expect(res.interfaces[0].sandbox).toBeUndefined();
    expect(res.interfaces[1]).toMatchObject({ name: 'eth0', sandbox: netns });
    expect(res.ips[0]).toMatchObject({ address: expect.stringMatching(/^10\.\d+\.\d+\.\d+\/12$/), interface: 1 });
    const gw = res.ips[0].gateway!;
    expect(res.routes).toEqual([{ dst: '0.0.0.0/0', gw }]);
    expect(res.dns).toMatchObject({ nameservers: ['169.254.83.83'], search: ['weft.local'] });
    const podIp = res.ips[0].address.split('/')[0];
    expect((await run('ip', ['-n', pod, 'route', 'show', 'default'])).stdout).toContain(`default via ${gw} dev eth0`);
    // The DNS server's MAC stays pinned (no ARP for it floods the overlay), after the re-announcement too.
    expect((await run('ip', ['-n', pod, 'neigh', 'show', '169.254.83.83'])).stdout).toMatch(/PERMANENT/);
    expect((await run('ip', ['-n', a.ns, '-d', 'link', 'show', 'dev', res.interfaces[0].name])).stdout).toMatch(
      /hairpin on/,
    );
    // A container on the other host reaches the pod, and by name.
    const other = await cluster.container('other');
    expect((await b.weft(['attach', `netns:${other}`])).code).toBe(0);
    const server = await echoServer(pod, 7300);
    const onB = await echoServer(b.ns, 7301);
    try {
      await eventually(
        'TCP from the other host to the pod',
        async () => (await echo(other, podIp, 7300, 'tcp', 50_000).catch(() => 0)) === 50_000,
        20_000,
        300,
      );
      // The pod's own host reaches it; the pod reaches another host's underlay address (default route, NAT).
      expect(await echo(a.ns, podIp, 7300, 'tcp', 10_000)).toBe(10_000);
      expect(await echo(pod, b.ip, 7301, 'tcp', 10_000)).toBe(10_000);
      // ... and still nothing of its router but DNS.
      expect(await echo(pod, gw, 6784, 'tcp', 5, 2000).catch(() => 'refused')).toBe('refused');
    } finally {
      server.stop();
      onB.stop();
    }
    await eventually(
      'pod name resolves on B',
      async () => (await b.weft(['dns-lookup', 'web-0.weft.local'])).stdout.trim() === podIp,
    );
    // CHECK compares against prevResult: as ADD left it, fine; an address weft never gave, an error.
    const prev = JSON.stringify(res);
    expect((await cni(a, { command: 'CHECK', id: 'c0ffee01', netns, config: conf({ prevResult: res }) })).code).toBe(0);
    const wrong = { ...res, ips: [{ ...res.ips[0], address: '10.99.99.99/12' }] };
    expect(
      (await cni(a, { command: 'CHECK', id: 'c0ffee01', netns, config: conf({ prevResult: wrong }) })).out,
    ).toMatchObject({ cniVersion: '1.1.0', code: 101, msg: expect.stringMatching(/10\.99\.99\.99/) });
    expect((await cni(a, { command: 'CHECK', id: 'c0ffee01', netns })).out).toMatchObject({
      code: 7,
      msg: expect.stringMatching(/prevResult/),
    });
    await run('ip', ['-n', pod, 'route', 'del', 'default']);
    expect(
      (await cni(a, { command: 'CHECK', id: 'c0ffee01', netns, config: conf({ prevResult: JSON.parse(prev) }) })).out,
    ).toMatchObject({ code: 101, msg: expect.stringMatching(/default route/) });
    expect(
      (await cni(a, { command: 'CHECK', id: 'unknown-id', netns, config: conf({ prevResult: res }) })).out,
    ).toMatchObject({ code: 101, msg: expect.stringMatching(/no attachment for container unknown-id/) });
    // DEL frees the address and the name, everywhere; a second DEL is fine.
    expect((await cni(a, { command: 'DEL', id: 'c0ffee01', netns })).code).toBe(0);
    expect((await run('ip', ['-n', pod, 'link', 'show', 'eth0'])).code).not.toBe(0);
    expect((await a.report<Report>()).ipam.owned.some((o) => o.ident === 'cni:c0ffee01')).toBe(false);
    await eventually(
      'name gone on B',
      async () => (await b.weft(['dns-lookup', 'web-0.weft.local'])).stdout.trim() === '',
    );
    expect((await cni(a, { command: 'DEL', id: 'c0ffee01', netns })).code).toBe(0);
    // ADD again, stop the router, DEL: still fine, and the interface is gone (the plugin removed it).
    // When the router comes back and the namespace is gone, the address is freed.
    expect((await cni(a, { command: 'ADD', id: 'c0ffee02', netns })).code).toBe(0);
    expect((await a.weft(['stop'])).code).toBe(0);
    expect((await cni(a, { command: 'STATUS' })).out).toMatchObject({
      code: 50,
      msg: expect.stringMatching(/does not answer/),
    });
    expect((await cni(a, { command: 'ADD', id: 'c0ffee03', netns })).out).toMatchObject({ code: 11 });
    expect((await cni(a, { command: 'DEL', id: 'c0ffee02', netns })).code).toBe(0);
    expect((await run('ip', ['-n', pod, 'link', 'show', 'eth0'])).code).not.toBe(0);
    await run('ip', ['netns', 'del', pod]);
    await a.launch();
    await eventually(
      'address of the deleted pod freed after restart',
      async () => !(await a.report<Report>()).ipam.owned.some((o) => o.ident === 'cni:c0ffee02'),
    );
  });

  it('versions 0.3.x to 1.1: results per version, STATUS, GC; bad input gets the spec error codes; the Node plugin does the same', async () => {
    cluster = await Cluster.create(1);
    const [a] = cluster.hosts;
    // No router yet: STATUS says not available; DEL succeeds.
    expect((await cni(a, { command: 'STATUS' })).out).toMatchObject({ code: 50 });
    await a.launch([], ['--ipalloc-init', 'consensus=1']);
    expect(await cni(a, { command: 'STATUS' })).toEqual({ code: 0, out: null });
    const p1 = await cluster.container('p1');
    const p2 = await cluster.container('p2');
    const old = await cni(a, {
      command: 'ADD',
      id: 'old1',
      netns: `/var/run/netns/${p1}`,
      config: conf({ cniVersion: '0.3.1' }),
    });
    expect(old.code, JSON.stringify(old.out)).toBe(0);
    expect(old.out).toMatchObject({ cniVersion: '0.3.1', ips: [{ version: '4', interface: 1 }] });
    const node = await cni(a, { command: 'ADD', id: 'new2', netns: `/var/run/netns/${p2}`, node: true });
    expect(node.code, JSON.stringify(node.out)).toBe(0);
    expect(node.out).toMatchObject({ cniVersion: '1.1.0', interfaces: [{}, { name: 'eth0' }] });
    expect((node.out as unknown as AddResult).ips[0].version).toBeUndefined();
    // GC keeps what the runtime lists and removes the rest.
    const gc = await cni(a, {
      command: 'GC',
      config: conf({ 'cni.dev/valid-attachments': [{ containerID: 'new2', ifname: 'eth0' }] }),
    });
    expect(gc).toEqual({ code: 0, out: null });
    const owned = (await a.report<Report>()).ipam.owned.map((o) => o.ident);
    expect(owned).toContain('cni:new2');
    expect(owned).not.toContain('cni:old1');
    expect((await run('ip', ['-n', p1, 'link', 'show', 'eth0'])).code).not.toBe(0);
    expect((await run('ip', ['-n', p2, 'link', 'show', 'eth0'])).code).toBe(0);
    // An interface of that name already in the container: an error, and nothing taken.
    expect((await run('ip', ['-n', p1, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'other0'])).code).toBe(0);
    expect((await cni(a, { command: 'ADD', id: 'dup', netns: `/var/run/netns/${p1}` })).out).toMatchObject({
      code: 100,
      msg: expect.stringMatching(/already exists/),
    });
    expect((await a.report<Report>()).ipam.owned.some((o) => o.ident === 'cni:dup')).toBe(false);
    expect((await run('ip', ['-n', p1, 'link', 'show', 'other0'])).code).toBe(0); // theirs, left alone
    expect((await a.exec('ip', ['link', 'show', hostIfName('cni:dup')])).code).not.toBe(0); // no veth of ours left
    // Nor a port binding for it in the guard (bound only once the name was found free).
    const guard = await a.exec('nft', ['list', 'table', 'bridge', 'weft']);
    expect(guard.code).toBe(0);
    expect(guard.stdout).not.toContain(hostIfName('cni:dup'));
    // Bad input, each with the spec's code and the config's own version.
    const p = `/var/run/netns/${p2}`;
    for (const node of [false, true]) {
      expect((await cni(a, { command: 'FROB', node })).out).toMatchObject({
        code: 4,
        msg: expect.stringMatching(/unknown CNI_COMMAND/),
      });
      expect((await cni(a, { command: 'ADD', id: 'x', netns: p, config: '{not json', node })).out).toMatchObject({
        code: 6,
      });
      expect(
        (await cni(a, { command: 'ADD', id: 'x', netns: p, config: conf({ cniVersion: '0.2.0' }), node })).out,
      ).toMatchObject({
        cniVersion: '0.2.0',
        code: 1,
      });
      expect(
        (await cni(a, { command: 'ADD', id: 'x', netns: p, config: conf({ groups: 'web' }), node })).out,
      ).toMatchObject({
        code: 7,
      });
      expect(
        (await cni(a, { command: 'ADD', id: 'x', netns: '/var/run/netns/does-not-exist', node })).out,
      ).toMatchObject({
        code: 3,
      });
      expect((await cni(a, { command: 'ADD', id: 'x', netns: p, env: { CNI_IFNAME: '' }, node })).out).toMatchObject({
        code: 4,
        msg: 'CNI_IFNAME not set',
      });
      expect((await cni(a, { command: 'VERSION', config: '{"cniVersion":"0.4.0"}', node })).out).toMatchObject({
        cniVersion: '0.4.0',
      });
    }
    expect((await cni(a, { command: 'DEL', id: 'new2', netns: p, node: true })).code).toBe(0);
    expect((await a.report<Report>()).ipam.owned.some((o) => o.ident === 'cni:new2')).toBe(false);
    // The router keeps running through all of it.
    expect((await a.weft(['status'])).code).toBe(0);
  });
});
