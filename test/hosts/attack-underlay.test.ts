// A machine on the underlay that is no peer sends VXLAN datagrams (weft's VNI)
// and sleeve datagrams carrying a frame for a container, on namespace hosts with
// the real kernel. From its own address nothing arrives, with or without a mesh
// password. From a peer's address (spoofed, as someone on the path could): the
// same datagrams arrive without a password (which shows they were well-formed,
// and is what README says a password closes), and do not with one; an IPv6 frame
// among them is dropped at the bridge all the same (a router without --ipv6 carries none). Over IPv6 on the
// underlay, VXLAN and sleeve datagrams from no peer of ours are dropped at the firewall's input (this
// router's --host is IPv4: it has no IPv6 peer at all).
import { afterEach, expect, it } from 'vitest';
import { Cluster, eventually, sleep } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { run } from '../harness/exec.js';
import {
  WEFT_VNI as VNI,
  bothArrived,
  injectOverlayFrames,
  ruleCounter,
  sendUdp,
  udpFrame,
  udpRecorder,
  vxlanPayload,
} from '../harness/attacker.js';

const FAST = ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'];
let cluster: Cluster | null = null;
const stoppers: (() => void)[] = [];
afterEach(async () => {
  for (const s of stoppers.splice(0)) s();
  await cluster?.cleanup();
  cluster = null;
});

/** An Ethernet frame with an IPv6 UDP datagram (fd00::1 to fd00::2, port 9999) for `dstMac`. */
function ipv6Frame(dstMac: string): Buffer {
  const ip = Buffer.alloc(40 + 8 + 4);
  ip[0] = 0x60;
  ip.writeUInt16BE(8 + 4, 4);
  ip[6] = 17;
  ip[7] = 64;
  Buffer.from('fd000000000000000000000000000001', 'hex').copy(ip, 8);
  Buffer.from('fd000000000000000000000000000002', 'hex').copy(ip, 24);
  ip.writeUInt16BE(40000, 40);
  ip.writeUInt16BE(9999, 42);
  ip.writeUInt16BE(12, 44);
  ip.write('ipv6', 48);
  const mac = (m: string) => Buffer.from(m.replaceAll(':', ''), 'hex');
  return Buffer.concat([mac(dstMac), mac('02:de:ad:be:ef:06'), Buffer.from([0x86, 0xdd]), ip]);
}

interface Report {
  name: string;
  connections: { peer?: string; state: string; overlay?: string }[];
  datapath: { localEndpoints: { container: string; mac: string; cidrs: string[] }[] };
}

/** Both hosts launched; a container attached on the first, recording what UDP reaches its port 9999. */
async function victimOnHost1(c: Cluster) {
  const [h1, h2] = await c.launchAll();
  const victim = await c.container('victim');
  const a = await h1.weft(['attach', `netns:${victim}`]);
  if (a.code !== 0) throw new Error(a.stderr);
  const r1 = await h1.report<Report>();
  const r2 = await h2.report<Report>();
  const ep = r1.datapath.localEndpoints.find((e) => e.container === `netns:${victim}`)!;
  const recorder = await udpRecorder(victim, 9999);
  stoppers.push(recorder.stop);
  return { h1, h2, r1, r2, ep, recorder };
}

describeAsRoot('a stranger on the underlay', () => {
  for (const password of [false, true]) {
    it(`${password ? 'with' : 'without'} a password: VXLAN and sleeve datagrams from a non-peer reach no container${password ? ', nor from a spoofed peer address' : '; from a spoofed peer address they do'}`, async () => {
      cluster = await Cluster.create(2, {
        routerArgs: FAST,
        env: password ? { WEFT_PASSWORD: 'the mesh password' } : {},
      });
      const { h1, h2, r1, r2, ep, recorder } = await victimOnHost1(cluster);
      await eventually('h1 and h2 connected', async () =>
        (await h1.report<Report>()).connections.some((c) => c.peer === r2.name && c.state === 'established'),
      );
      const stranger = await cluster.stranger(1);
      const frame = (text: string) =>
        udpFrame({
          srcMac: '02:de:ad:be:ef:01',
          dstMac: ep.mac,
          srcIp: '10.32.99.99',
          dstIp: ep.cidrs[0].split('/')[0],
          dstPort: 9999,
          text,
        });
      const inject = (tag: string, from?: string) =>
        injectOverlayFrames({
          ns: stranger.ns,
          host: h1.ip,
          container: { mac: ep.mac, ip: ep.cidrs[0].split('/')[0] },
          hop: r2.name,
          dst: r1.name,
          tag,
          ...(from ? { from } : {}),
        });
      const input = async () => (await h1.exec('nft', ['list', 'chain', 'inet', 'weft', 'input'])).stdout;
      const dropped = ruleCounter(await input(), 'VXLAN from no peer of ours');

      await inject('from its own address');
      await sleep(1000);
      expect(recorder.received()).toEqual([]);
      expect(ruleCounter(await input(), 'VXLAN from no peer of ours') - dropped).toBeGreaterThanOrEqual(5);

      await cluster.borrow(stranger.ns, h2.ip);
      await inject('from a spoofed peer address', h2.ip);
      if (password) {
        await sleep(1500);
        expect(recorder.received()).toEqual([]);
      } else {
        // Well-formed: only the source address stopped them before.
        expect(await bothArrived(recorder, 'from a spoofed peer address')).toBe(true);
        // An IPv6 frame the same way (this router runs without --ipv6), and the IPv4 one behind a VLAN tag of 0
        // (which a container's kernel takes as untagged, and br_netfilter would not show the security
        // groups), are dropped where they enter the bridge.
        const guard = async () =>
          ruleCounter(
            (await h1.exec('nft', ['list', 'table', 'bridge', 'weft'])).stdout,
            'neither IPv4 nor ARP from the overlay (IPv6 and VLAN tags included)',
          );
        const before = await guard();
        const ipv4 = frame('tagged from a spoofed peer address');
        const tagged = Buffer.concat([ipv4.subarray(0, 12), Buffer.from([0x81, 0x00, 0x00, 0x00]), ipv4.subarray(12)]);
        await sendUdp(stranger.ns, h1.ip, 6784, vxlanPayload(VNI, ipv6Frame(ep.mac)), h2.ip, 5);
        await sendUdp(stranger.ns, h1.ip, 6784, vxlanPayload(VNI, tagged), h2.ip, 5);
        await eventually('the frames to be counted as dropped', async () => (await guard()) - before >= 10, 5000, 100);
        await sleep(500);
        expect(recorder.received().some((d) => d.data.startsWith('tagged'))).toBe(false);
      }
    }, 120_000);
  }

  it('over IPv6 on the underlay: VXLAN and sleeve datagrams are dropped at the input, whatever they carry', async () => {
    cluster = await Cluster.create(2, { routerArgs: FAST });
    const { h1, r1, r2, ep, recorder } = await victimOnHost1(cluster);
    const stranger = await cluster.stranger(1);
    // IPv6 on the underlay segment: the host's uplink and the stranger's.
    for (const [ns, dev, n] of [
      [h1.ns, 'eth0', 1],
      [stranger.ns, 'eth0', 201],
    ] as const)
      expect((await run('ip', ['-n', ns, 'addr', 'add', `fd00:198:18::${n}/64`, 'dev', dev, 'nodad'])).code).toBe(0);
    const input = async () => (await h1.exec('nft', ['list', 'chain', 'inet', 'weft', 'input'])).stdout;
    const rules = ['VXLAN over IPv6 from no peer of ours', 'sleeve datagrams over IPv6 from no peer of ours'];
    const counted = async () => {
      const listing = await input();
      return rules.map((r) => ruleCounter(listing, r));
    };
    const before = await counted();
    await injectOverlayFrames({
      ns: stranger.ns,
      host: 'fd00:198:18::1',
      container: { mac: ep.mac, ip: ep.cidrs[0].split('/')[0] },
      hop: r2.name,
      dst: r1.name,
      tag: 'over ipv6',
    });
    await eventually('the datagrams counted as dropped', async () =>
      (await counted()).every((n, i) => n - before[i] >= 5),
    );
    await sleep(500);
    expect(recorder.received()).toEqual([]);
  }, 120_000);
});
