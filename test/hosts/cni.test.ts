// The CNI plugin, run as a runtime would run it: config on stdin, CNI_* in the environment.
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { projectRoot } from '../../lib/project-root.js';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { echo, echoServer } from '../harness/traffic.js';

const PLUGIN = join(projectRoot(), 'dist', 'cli', 'weft-cni.js');
const CONF = JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft-cni', dnsDomain: 'weft.local' });
let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

/** Runs the plugin in a host's namespace, as the runtime would. */
async function cni(h: Host, command: string, id: string, netns: string, extra: NodeJS.ProcessEnv = {}) {
  const r = await run('ip', ['netns', 'exec', h.ns, process.execPath, PLUGIN], {
    input: CONF,
    env: {
      ...process.env,
      CNI_COMMAND: command,
      CNI_CONTAINERID: id,
      CNI_NETNS: netns,
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/opt/cni/bin',
      CNI_ARGS: 'K8S_POD_NAME=web-0',
      ...extra,
    },
    timeoutMs: 60_000,
  });
  return { code: r.code, out: r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, unknown>) : null };
}

describeAsRoot('CNI plugin', () => {
  it('ADD gives a working address across hosts and a DNS name; CHECK passes; DEL twice is fine; DEL with the router down is fine', async () => {
    cluster = await Cluster.create(2, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
    });
    const [a, b] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    const version = await cni(a, 'VERSION', '', '');
    expect(version.out).toMatchObject({ supportedVersions: ['0.4.0', '1.0.0'] });
    const pod = await cluster.container('pod');
    const added = await cni(a, 'ADD', 'c0ffee01', `/var/run/netns/${pod}`);
    expect(added.code, JSON.stringify(added.out)).toBe(0);
    const res = added.out as {
      interfaces: { name: string; mac: string; sandbox: string }[];
      ips: { address: string }[];
      dns: { nameservers: string[]; search: string[] };
    };
    expect(res.interfaces[0]).toMatchObject({ name: 'eth0', sandbox: `/var/run/netns/${pod}` });
    expect(res.ips[0].address).toMatch(/^10\.\d+\.\d+\.\d+\/12$/);
    expect(res.dns).toEqual({ nameservers: ['169.254.83.83'], search: ['weft.local'] });
    const podIp = res.ips[0].address.split('/')[0];
    // The address is on eth0 inside the pod; a container on the other host reaches it, and by name.
    expect((await run('ip', ['-n', pod, 'addr', 'show', 'dev', 'eth0'])).stdout).toContain(res.ips[0].address);
    const other = await cluster.container('other');
    expect((await b.weft(['attach', `netns:${other}`])).code).toBe(0);
    const server = await echoServer(pod, 7300);
    try {
      await eventually(
        'TCP from the other host to the pod',
        async () => (await echo(other, podIp, 7300, 'tcp', 50_000).catch(() => 0)) === 50_000,
        20_000,
        300,
      );
    } finally {
      server.stop();
    }
    await eventually(
      'pod name resolves on B',
      async () => (await b.weft(['dns-lookup', 'web-0.weft.local'])).stdout.trim() === podIp,
    );
    expect((await cni(a, 'CHECK', 'c0ffee01', `/var/run/netns/${pod}`)).code).toBe(0);
    // A runtime error reads as a CNI error on stdout.
    const bad = await cni(a, 'CHECK', 'unknown-id', `/var/run/netns/${pod}`);
    expect(bad.code).not.toBe(0);
    expect(bad.out).toMatchObject({ code: 999, msg: expect.stringMatching(/no attachment for cni:unknown-id/) });
    // DEL frees the address and the name, everywhere; a second DEL is fine.
    expect((await cni(a, 'DEL', 'c0ffee01', `/var/run/netns/${pod}`)).code).toBe(0);
    expect((await run('ip', ['-n', pod, 'link', 'show', 'eth0'])).code).not.toBe(0);
    expect((await a.report<Report>()).ipam.owned.some((o) => o.ident === 'cni:c0ffee01')).toBe(false);
    await eventually(
      'name gone on B',
      async () => (await b.weft(['dns-lookup', 'web-0.weft.local'])).stdout.trim() === '',
    );
    expect((await cni(a, 'DEL', 'c0ffee01', `/var/run/netns/${pod}`)).code).toBe(0);
    // ADD again, stop the router, DEL: still fine, and the interface is gone. When the router comes
    // back and the namespace is gone, the address is freed.
    const again = await cni(a, 'ADD', 'c0ffee02', `/var/run/netns/${pod}`);
    expect(again.code).toBe(0);
    expect((await a.weft(['stop'])).code).toBe(0);
    expect((await cni(a, 'DEL', 'c0ffee02', `/var/run/netns/${pod}`)).code).toBe(0);
    expect((await run('ip', ['-n', pod, 'link', 'show', 'eth0'])).code).not.toBe(0);
    await run('ip', ['netns', 'del', pod]);
    await a.launch();
    await eventually(
      'address of the deleted pod freed after restart',
      async () => !(await a.report<Report>()).ipam.owned.some((o) => o.ident === 'cni:c0ffee02'),
    );
  });

  it('bad input: unknown command, broken config, missing variables: a CNI error, never a crash', async () => {
    cluster = await Cluster.create(1);
    const [a] = cluster.hosts;
    expect((await cni(a, 'FROB', 'x', '/nonexistent')).out).toMatchObject({
      code: 4,
      msg: expect.stringMatching(/unknown CNI_COMMAND/),
    });
    const broken = await run('ip', ['netns', 'exec', a.ns, process.execPath, PLUGIN], {
      input: '{not json',
      env: { ...process.env, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: '/x', CNI_IFNAME: 'eth0' },
    });
    expect(JSON.parse(broken.stdout)).toMatchObject({ code: 6 });
    expect((await cni(a, 'ADD', 'x', '/var/run/netns/does-not-exist')).out).toMatchObject({
      code: 11,
      msg: expect.stringMatching(/does not exist/),
    });
    // No router here: ADD says so; DEL succeeds.
    const pod = await cluster.container('p');
    expect((await cni(a, 'ADD', 'x', `/var/run/netns/${pod}`)).out).toMatchObject({
      code: 11,
      msg: expect.stringMatching(/does not answer/),
    });
    expect((await cni(a, 'DEL', 'x', `/var/run/netns/${pod}`)).code).toBe(0);
    expect((await cni(a, 'ADD', 'x', `/var/run/netns/${pod}`, { CNI_IFNAME: '' })).out).toMatchObject({
      code: 4,
      msg: 'CNI_IFNAME is not set',
    });
  });
});
