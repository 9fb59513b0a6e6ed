// An IPv6-only underlay (no IPv4 address on the hosts' uplinks): what works today. The mesh forms over
// IPv6, IPAM of both families works, containers attach, and the status says why containers' traffic
// has no data path to the other host yet (VXLAN and the sleeve over IPv6 are issue #24's).
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually } from '../harness/cluster.js';
import { run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';

let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

describeAsRoot('an IPv6-only underlay', () => {
  it('the mesh forms over IPv6; IPAM of both families works; containers attach; status says why there is no data path', async () => {
    cluster = await Cluster.create(2, { routerArgs: ['--ipalloc-init', 'consensus=2'] });
    const [a, b] = cluster.hosts;
    for (const h of [a, b]) {
      expect((await run('ip', ['-n', h.ns, 'addr', 'flush', 'dev', 'eth0'])).code).toBe(0);
      expect(
        (await run('ip', ['-n', h.ns, 'addr', 'add', `fd00:198:18::${h.index}/64`, 'dev', 'eth0', 'nodad'])).code,
      ).toBe(0);
    }
    await a.launch([], ['--host', 'fd00:198:18::1']);
    await b.launch(['[fd00:198:18::1]:6783'], ['--host', 'fd00:198:18::2']);
    await eventually('both see both', async () =>
      (await Promise.all([a, b].map((h) => h.report<Report>()))).every(
        (r) => r.connections.filter((c) => c.state === 'established').length === 1,
      ),
    );
    const v6 = await b.weft(['ipam', 'alloc', '--ipv6', 'x']);
    expect(v6.stdout.trim(), v6.stderr).toMatch(/^fd77:6566:7400:[0-9a-f:]*\/48$/); // from b's half of the ring
    const c1 = await cluster.container('c1');
    const r = await a.weft(['attach', `netns:${c1}`]);
    expect(r.code, r.stderr).toBe(0);
    // IPv6 in containers needs --ipv6 on the router: asked for without it, it is refused with the reason.
    const six = await a.weft(['attach', 'fd77:6566:7400::5/64', `netns:${c1}`]);
    expect(six.code).not.toBe(0);
    expect(six.stderr).toMatch(/containers get IPv6 addresses only when the router runs with --ipv6/);
    // IPv6 addresses a script allocated for a container go when it is detached, as its IPv4 ones do.
    expect((await a.weft(['ipam', 'alloc', '--ipv6', `netns:${c1}`])).code).toBe(0);
    expect((await a.weft(['detach', `netns:${c1}`])).code).toBe(0);
    expect((await a.weft(['ipam', 'lookup', `netns:${c1}`])).stderr).toMatch(/no addresses/);
    expect((await a.weft(['attach', `netns:${c1}`])).code).toBe(0);
    const c2 = await cluster.container('c2');
    const r2 = await b.weft(['attach', `netns:${c2}`]);
    expect(r2.code, r2.stderr).toBe(0);
    await eventually('the endpoints known on both hosts', async () =>
      (await Promise.all([a, b].map((h) => h.report<Report>()))).every((rep) => rep.datapath!.endpoints.length === 2),
    );
    // What there is not yet, said plainly; and nothing tried in vain (no VXLAN entry to an IPv6 peer).
    expect((await a.weft(['status'])).stdout).toMatch(/Overlays: 0 fastdp, 0 sleeve, 1 with no data path/);
    expect((await a.weft(['status', 'connections'])).stdout).toMatch(
      /established .*\(host2\) .*no data path: connected over IPv6; VXLAN and the sleeve run over an IPv4 underlay only/,
    );
    const dp = (await a.report<Report>()).datapath!;
    expect([dp.stats.errors, dp.lastError]).toEqual([0, null]);
    expect((await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft'])).stdout).not.toMatch(/dst fd00/);
  });
});
