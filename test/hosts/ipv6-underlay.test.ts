// An IPv6-only underlay (no IPv4 address on the hosts' uplinks). The mesh forms over IPv6, IPAM of both
// families works, and containers talk over both overlay families on fastdp: the kernel's second VXLAN
// device (VXLAN over IPv6), at the full overlay MTU (the underlay's minus VXLAN over IPv6's 70 bytes).
// A stranger on the underlay gets no VXLAN or sleeve datagram over IPv6 in; from a peer's IPv6
// address (spoofed) they arrive without a password (as over IPv4: what the password closes), not with one. With a password the path is encrypted: the
// sleeve carries it over IPv6, and an IPv6 trusted subnet puts the peers on fastdp. A mixed mesh: an
// IPv4-only host and an IPv6-only one reach each other through a dual-stack host (the sleeve relays).
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, sleep, type Host } from '../harness/cluster.js';
import { run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { bothArrived, injectOverlayFrames, ruleCounter, udpRecorder } from '../harness/attacker.js';

let cluster: Cluster | null = null;
const stoppers: (() => void)[] = [];
afterEach(async () => {
  for (const s of stoppers.splice(0)) s();
  await cluster?.cleanup();
  cluster = null;
});

const ping = (ns: string, to: string, extra: string[] = []) =>
  run('ip', ['netns', 'exec', ns, 'ping', '-c', '2', '-i', '0.2', '-W', '2', ...extra, to], { timeoutMs: 10_000 });

/** Takes the hosts' IPv4 underlay addresses away and gives them fd00:198:18::INDEX. */
async function ipv6OnlyUnderlay(hosts: Host[]): Promise<void> {
  for (const h of hosts) {
    expect((await run('ip', ['-n', h.ns, 'addr', 'flush', 'dev', 'eth0'])).code).toBe(0);
    expect(
      (await run('ip', ['-n', h.ns, 'addr', 'add', `fd00:198:18::${h.index}/64`, 'dev', 'eth0', 'nodad'])).code,
    ).toBe(0);
  }
}

async function bothConnected(hosts: Host[]): Promise<void> {
  await eventually('both see both', async () =>
    (await Promise.all(hosts.map((h) => h.report<Report>()))).every(
      (r) => r.connections.filter((c) => c.state === 'established').length === hosts.length - 1,
    ),
  );
}

async function sleeveCounters(h: Host) {
  return (await h.report<Report>()).datapath!.sleeve as unknown as {
    framesIn: number;
    refused: number;
    malformed: number;
    relayed: number;
  };
}

describeAsRoot('an IPv6-only underlay', () => {
  for (const password of [false, true])
    it(`a stranger on an IPv6 underlay, ${password ? 'with' : 'without'} a password: its VXLAN and sleeve datagrams reach no container, ${password ? 'nor from a spoofed peer address' : 'but from a spoofed peer address they do'}`, async () => {
      cluster = await Cluster.create(2, {
        routerArgs: ['--ipalloc-init', 'consensus=2', '--heartbeat-interval', '500ms'],
        env: password ? { WEFT_PASSWORD: 'the mesh password' } : {},
      });
      const [a, b] = cluster.hosts;
      await ipv6OnlyUnderlay([a, b]);
      await a.launch([], ['--host', 'fd00:198:18::1']);
      await b.launch(['[fd00:198:18::1]:6783'], ['--host', 'fd00:198:18::2']);
      await bothConnected([a, b]);
      const overlay = password ? 'sleeve' : 'fastdp';
      await eventually(`a reaches b on ${overlay}`, async () =>
        (await a.report<Report>()).connections.some((c) => c.state === 'established' && c.overlay === overlay),
      );
      const ra = await a.report<Report>();
      const rb = await b.report<Report>();
      const victim = await cluster.container('victim');
      const attached = await a.weft(['attach', `netns:${victim}`]);
      expect(attached.code, attached.stderr).toBe(0);
      const ep = (await a.report<Report>()).datapath!.localEndpoints.find((e) => e.container === `netns:${victim}`)!;
      const recorder = await udpRecorder(victim, 9999);
      stoppers.push(recorder.stop);
      const stranger = await cluster.stranger(1);
      expect(
        (await run('ip', ['-n', stranger.ns, 'addr', 'add', 'fd00:198:18::201/64', 'dev', 'eth0', 'nodad'])).code,
      ).toBe(0);
      const inject = (tag: string, from?: string) =>
        injectOverlayFrames({
          ns: stranger.ns,
          host: 'fd00:198:18::1',
          container: { mac: ep.mac, ip: ep.cidrs[0].split('/')[0] },
          hop: rb.name,
          dst: ra.name,
          tag,
          ...(from ? { from } : {}),
        });
      const vxlanDropped = async () =>
        ruleCounter(
          (await a.exec('nft', ['list', 'chain', 'inet', 'weft', 'input'])).stdout,
          'VXLAN over IPv6 from no peer of ours',
        );
      const before = await vxlanDropped();
      await inject('from its own address');
      await sleep(1000);
      expect(recorder.received()).toEqual([]);
      expect((await vxlanDropped()) - before).toBeGreaterThanOrEqual(5);

      // From b's address, as someone on the path could send.
      await cluster.borrow(stranger.ns, 'fd00:198:18::2');
      const sleeve0 = await sleeveCounters(a);
      await inject('from a spoofed peer address', 'fd00:198:18::2');
      if (password) {
        await sleep(1500);
        expect(recorder.received()).toEqual([]);
        // Not sealed with the hop's key: refused, and the VXLAN device takes nothing from a peer on the sleeve.
        const sleeve1 = await sleeveCounters(a);
        expect(sleeve1.refused + sleeve1.malformed - sleeve0.refused - sleeve0.malformed).toBeGreaterThanOrEqual(5);
        expect((await vxlanDropped()) - before).toBeGreaterThanOrEqual(10);
      } else {
        expect(await bothArrived(recorder, 'from a spoofed peer address')).toBe(true);
      }
    }, 120_000);

  it('the mesh forms over IPv6; containers talk over both families on VXLAN over IPv6 at full MTU; strangers get nothing in', async () => {
    cluster = await Cluster.create(2, { routerArgs: ['--ipalloc-init', 'consensus=2', '--ipv6'] });
    const [a, b] = cluster.hosts;
    await ipv6OnlyUnderlay([a, b]);
    await a.launch([], ['--host', 'fd00:198:18::1']);
    await b.launch(['[fd00:198:18::1]:6783'], ['--host', 'fd00:198:18::2']);
    await bothConnected([a, b]);
    const v6 = await b.weft(['ipam', 'alloc', '--ipv6', 'x']);
    expect(v6.stdout.trim(), v6.stderr).toMatch(/^fd77:6566:7400:[0-9a-f:]*\/48$/);

    const c1 = await cluster.attached(a, 'c1');
    const c2 = await cluster.attached(b, 'c2');
    expect(c1.ip6).toMatch(/^fd77:6566:7400:/);
    // The overlay MTU leaves room for VXLAN over IPv6: 1500 - 70.
    expect((await run('ip', ['-n', c1.ns, 'link', 'show', 'ethwe'])).stdout).toMatch(/mtu 1430 /);
    await eventually('the peers on fastdp', async () =>
      /established .*\(host2\) .* fastdp mtu=1430/.test((await a.weft(['status', 'connections'])).stdout),
    );
    await eventually('ping a -> b over IPv4', async () => (await ping(c1.ns, c2.ip)).code === 0, 15_000);
    expect((await ping(c2.ns, c1.ip)).code).toBe(0);
    expect((await ping(c1.ns, c2.ip6!, ['-6'])).code).toBe(0);
    // Full-size packets, not fragmented: 1430 bytes of IPv4, and of IPv6.
    expect((await ping(c1.ns, c2.ip, ['-M', 'do', '-s', String(1430 - 28)])).code).toBe(0);
    expect((await ping(c2.ns, c1.ip6!, ['-6', '-M', 'do', '-s', String(1430 - 48)])).code).toBe(0);
    // The kernel carries it: the IPv6 device's entries point at the peer, the IPv4 device has none.
    expect((await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft6'])).stdout).toMatch(/dst fd00:198:18::2 /);
    expect((await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft'])).stdout).not.toMatch(/dst /);
    const dp = (await a.report<Report>()).datapath!;
    expect([dp.stats.errors, dp.lastError]).toEqual([0, null]);

    // A stranger on the IPv6 underlay sends VXLAN with a frame for c1: dropped at the input, as over IPv4.
    const stranger = await cluster.stranger(1);
    expect(
      (await run('ip', ['-n', stranger.ns, 'addr', 'add', 'fd00:198:18::201/64', 'dev', 'eth0', 'nodad'])).code,
    ).toBe(0);
    const recorder = await udpRecorder(c1.ns, 9999);
    stoppers.push(recorder.stop);
    const c1Mac = (await a.report<Report>()).datapath!.localEndpoints.find(
      (e) => e.container === `netns:${c1.ns}`,
    )!.mac;
    const input = async () => (await a.exec('nft', ['list', 'chain', 'inet', 'weft', 'input'])).stdout;
    const rules = ['VXLAN over IPv6 from no peer of ours', 'sleeve datagrams over IPv6 from no peer of ours'];
    const counted = async () => {
      const listing = await input();
      return rules.map((r) => ruleCounter(listing, r));
    };
    const before = await counted();
    const [ra, rb] = await Promise.all([a.report<Report>(), b.report<Report>()]);
    await injectOverlayFrames({
      ns: stranger.ns,
      host: 'fd00:198:18::1',
      container: { mac: c1Mac, ip: c1.ip },
      hop: rb.name,
      dst: ra.name,
      tag: 'from a stranger',
    });
    await eventually('the datagrams counted as dropped', async () =>
      (await counted()).every((n, i) => n - before[i] >= 5),
    );
    await sleep(500);
    expect(recorder.received()).toEqual([]);

    // A router killed and restarted: the kernel carries traffic meanwhile, and the restarted router
    // keeps the IPv6 device it finds (its entries say it is one) instead of making it again.
    const ifindex = async () => (await a.exec('cat', ['/sys/class/net/vxlan-weft6/ifindex'])).stdout.trim();
    const before6 = await ifindex();
    await a.kill();
    expect((await ping(c1.ns, c2.ip6!, ['-6'])).code).toBe(0);
    await a.launch([], ['--host', 'fd00:198:18::1']);
    await bothConnected([a, b]);
    expect(await ifindex()).toBe(before6);
    await eventually('ping b -> a after the restart', async () => (await ping(c2.ns, c1.ip)).code === 0, 15_000);
    // Back on fastdp once its heartbeats are acknowledged again (the sleeve may carry it for a moment).
    await eventually('fastdp again after the restart', async () =>
      /dst fd00:198:18::2 /.test((await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft6'])).stdout),
    );
  }, 120_000);

  it('with a password: the encrypted sleeve carries both families over IPv6; a trusted IPv6 underlay goes on fastdp', async () => {
    cluster = await Cluster.create(2, {
      routerArgs: ['--ipalloc-init', 'consensus=2', '--password', 'secret-for-test', '--ipv6'],
    });
    const [a, b] = cluster.hosts;
    await ipv6OnlyUnderlay([a, b]);
    await a.launch([], ['--host', 'fd00:198:18::1']);
    await b.launch(['[fd00:198:18::1]:6783'], ['--host', 'fd00:198:18::2']);
    await bothConnected([a, b]);
    const c1 = await cluster.attached(a, 'c1');
    const c2 = await cluster.attached(b, 'c2');
    await eventually('the sleeve carries it, encrypted', async () =>
      /established .*\(host2\) .* sleeve mtu=1430 pmtu=1500 \(data encrypted\); not fastdp: encrypted: no kernel encryption here, so the sleeve carries it/.test(
        (await a.weft(['status', 'connections'])).stdout,
      ),
    );
    await eventually('ping a -> b over IPv4', async () => (await ping(c1.ns, c2.ip)).code === 0, 15_000);
    expect((await ping(c2.ns, c1.ip6!, ['-6'])).code).toBe(0);
    // Full-size packets too (the sleeve cuts them to the IPv6 path's MTU).
    expect((await ping(c1.ns, c2.ip, ['-M', 'do', '-s', String(1430 - 28)])).code).toBe(0);
    expect((await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft6'])).stdout).not.toMatch(/dst /);
    const sleeve = await sleeveCounters(a);
    expect(sleeve.framesIn).toBeGreaterThan(0);
    expect([sleeve.refused, sleeve.malformed]).toEqual([0, 0]);

    for (const h of [a, b]) {
      await h.weft(['stop']);
      await h.launch(h === a ? [] : ['[fd00:198:18::1]:6783'], [
        '--host',
        `fd00:198:18::${h.index}`,
        '--trusted-subnets',
        'fd00:198:18::/64',
      ]);
    }
    await bothConnected([a, b]);
    await eventually('the peers on fastdp', async () =>
      /established .*\(host2\) .* fastdp mtu=1430/.test((await a.weft(['status', 'connections'])).stdout),
    );
    await eventually('ping a -> b', async () => (await ping(c1.ns, c2.ip)).code === 0, 15_000);
  }, 120_000);

  it('a mixed mesh: an IPv4-only and an IPv6-only host reach each other through a dual-stack one', async () => {
    cluster = await Cluster.create(3, { routerArgs: ['--ipalloc-init', 'consensus=3', '--ipv6', '--mtu', '1430'] });
    const [a, b, c] = cluster.hosts;
    // a: both families (--host ::); b: IPv4 only (as made); c: IPv6 only.
    expect((await run('ip', ['-n', a.ns, 'addr', 'add', 'fd00:198:18::1/64', 'dev', 'eth0', 'nodad'])).code).toBe(0);
    await ipv6OnlyUnderlay([c]);
    await a.launch([], ['--host', '::']);
    await b.launch([a.ip]);
    await c.launch(['[fd00:198:18::1]:6783'], ['--host', 'fd00:198:18::3']);
    await eventually(
      'a connected to both',
      async () => (await a.report<Report>()).connections.filter((x) => x.state === 'established').length === 2,
    );
    const cb = await cluster.attached(b, 'cb');
    const cc = await cluster.attached(c, 'cc');
    // a reaches b over IPv4 and c over IPv6, each on fastdp.
    await eventually('a on fastdp with both', async () => {
      const out = (await a.weft(['status', 'connections'])).stdout;
      return /\(host2\) .* fastdp mtu=1430/.test(out) && /\(host3\) .* fastdp mtu=1430/.test(out);
    });
    expect((await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft6'])).stdout).toMatch(/dst fd00:198:18::3 /);
    expect((await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft'])).stdout).toMatch(/dst 198\.18\.0\.2 /);
    // b and c share no underlay family: the sleeve relays through a, both overlay families, both ways.
    await eventually('ping b -> c through a', async () => (await ping(cb.ns, cc.ip)).code === 0, 20_000);
    expect((await ping(cc.ns, cb.ip)).code).toBe(0);
    expect((await ping(cb.ns, cc.ip6!, ['-6'])).code).toBe(0);
    expect((await sleeveCounters(a)).relayed).toBeGreaterThan(0);
  }, 120_000);
});
