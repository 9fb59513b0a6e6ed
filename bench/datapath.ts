// Datapath throughput and latency across two namespace hosts, in one run:
//   (a) the veth underlay between the hosts,
//   (b) a hand-built kernel VXLAN + bridge with static fdb, container to container (the anchor),
//   (c) weft fastdp, container to container (weft launch + weft attach),
//   (d) weft sleeve (--no-fastdp), (e) weft sleeve encrypted (a password; sealed in the addon, and again with
//   WEFT_SLEEVE_FAST=off, sealed in JavaScript), each on a fresh pair of hosts,
//   (f) weft on OVS (--datapath ovs, netdev), against OVS's own NORMAL learning switch built the same
//   way on the same hosts, bridges and underlay (the fair anchor for a controller), on a fresh pair of
//   hosts each running Open vSwitch,
//   (g) IPv6 between dual-stack containers (--ipv6) on fastdp and on the sleeve, against IPv4 between the
//   same two containers, in alternating rounds (--only ipv6 runs these alone),
//   (h) weft fastdp over an IPv6 underlay (VXLAN over IPv6, --host an IPv6 address) against (b) built by
//   hand over IPv4 on the same hosts, in alternating rounds (--only underlay6 runs these alone).
// One TCP flow with iperf3, ping RTT (median of 200), and for weft the routers' CPU seconds per GB
// carried. Prints c/b, d/b, e/b, c/a, f/NORMAL and f/b. The kernel rows (b) and (c) are measured in
// --rounds rounds whose order alternates (the machine drifts; one round is noise): each round's c/b,
// then their median and spread.
//
//   apt-get install -y iperf3 iputils-ping openvswitch-switch ethtool && npm run build && node dist/bench/datapath.js [--seconds 5] [--rounds 6] [--only ovs|sleeve|kernel|ipv6|underlay6]
import type { Report } from '../router/contract.js';
import { Cluster, eventually, type Host } from '../test/harness/cluster.js';
import { must, run } from '../test/harness/exec.js';
import { cpuSeconds, iperf, rtt } from './measure.js';
import { numberArg, stringArg } from './args.js';

const seconds = numberArg('seconds', 5);
/**
 * `--only ovs` / `--only sleeve` / `--only kernel`: the kernel rows (a, b, c) and the OVS rows (f), the
 * sleeve rows (d, e), or nothing more; `--only ipv6`: the IPv6 rows (g) alone; `--only underlay6`: (h) alone.
 */
const only = stringArg('only', '');
/** Rounds of (b, c), in alternating order. */
const rounds = numberArg('rounds', 6);

const median = (xs: number[]) => {
  const s = [...xs].sort((p, q) => p - q);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * Runs `x` and `y` once per round, in alternating order (the machine drifts; one round is noise),
 * and `after` at the end of each round.
 */
async function alternating(
  x: () => Promise<unknown>,
  y: () => Promise<unknown>,
  after: (round: number) => void = () => undefined,
): Promise<void> {
  for (let round = 0; round < rounds; round++) {
    for (const f of round % 2 === 0 ? [x, y] : [y, x]) await f();
    after(round);
  }
}

/**
 * A hand-made container for the anchors: a namespace on host `h`'s Linux bridge `br` by a veth, with
 * `addr` and the overlay MTU on its end (a veth's peer does not take its MTU), as weft's containers have.
 */
async function refContainer(
  cluster: Cluster,
  h: Host,
  label: string,
  br: string,
  addr: string,
  mtu: number,
): Promise<string> {
  const ns = await cluster.container(label);
  await must('ip', [
    '-n',
    h.ns,
    'link',
    'add',
    'vref',
    'mtu',
    String(mtu),
    'type',
    'veth',
    'peer',
    'name',
    'eth0',
    'netns',
    ns,
  ]);
  await must('ip', ['-n', h.ns, 'link', 'set', 'vref', 'master', br, 'up']);
  await must('ip', ['-n', ns, 'addr', 'add', addr, 'dev', 'eth0']);
  await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'mtu', String(mtu), 'up']);
  await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  return ns;
}

/** (b): what weft programs, built by hand: bridge + VXLAN (another VNI and port) + static fdb. */
async function handBuilt(cluster: Cluster, a: Host, b: Host, mtu: number): Promise<[string, string, string]> {
  const nss: string[] = [];
  const macs: string[] = [];
  for (const [i, h] of [a, b].entries()) {
    const x = (args: string[]) => must('ip', ['-n', h.ns, ...args]);
    await x(['link', 'add', 'br-ref', 'type', 'bridge']);
    await x(['link', 'add', 'vx-ref', 'type', 'vxlan', 'id', '100', 'dstport', '4789', 'nolearning']);
    await x(['link', 'set', 'vx-ref', 'master', 'br-ref', 'mtu', String(mtu), 'up']);
    await x(['link', 'set', 'br-ref', 'up']);
    const ns = await refContainer(cluster, h, `ref${i + 1}`, 'br-ref', `10.99.0.${i + 1}/24`, mtu);
    nss.push(ns);
    macs.push(JSON.parse(await must('ip', ['-n', ns, '-json', 'link', 'show', 'eth0']))[0].address as string);
  }
  for (const [i, h] of [a, b].entries()) {
    const other = i === 0 ? b : a;
    await must('bridge', [
      '-n',
      h.ns,
      'fdb',
      'append',
      '00:00:00:00:00:00',
      'dev',
      'vx-ref',
      'dst',
      other.ip,
      'self',
      'permanent',
    ]);
    await must('bridge', [
      '-n',
      h.ns,
      'fdb',
      'add',
      macs[1 - i],
      'dev',
      'vx-ref',
      'dst',
      other.ip,
      'self',
      'permanent',
    ]);
  }
  return [nss[0], nss[1], '10.99.0.2'];
}

/**
 * weft launched on both hosts (b's peer and each one's extra arguments given), a container attached on
 * each, and (b) built by hand at weft's MTU; both paths up.
 */
async function weftAndHandBuilt(cluster: Cluster, peerOfB: string, extraA: string[], extraB: string[]) {
  const [a, b] = cluster.hosts;
  await a.launch([], ['--ipalloc-init', 'consensus=2', ...extraA]);
  await b.launch([peerOfB], ['--ipalloc-init', 'consensus=2', ...extraB]);
  await eventually('connected', async () =>
    (await a.report<Report>()).connections.some((c) => c.state === 'established'),
  );
  const mtu = (await a.report<Report>()).datapath!.mtu;
  const w1 = await cluster.container('w1');
  const w2 = await cluster.container('w2');
  await a.weft(['attach', `netns:${w1}`]);
  const ip2 = (await b.weft(['attach', `netns:${w2}`])).stdout.trim().split('/')[0];
  const [r1, r2, rip] = await handBuilt(cluster, a, b, mtu);
  for (const [what, from, to] of [
    ['weft path up', w1, ip2],
    ['hand-built path up', r1, rip],
  ])
    await eventually(
      what,
      async () => (await run('ip', ['netns', 'exec', from, 'ping', '-c', '1', '-W', '1', to])).code === 0,
      15_000,
    );
  return { mtu, w1, w2, ip2, r1, r2, rip };
}

/** A fresh pair of hosts with weft launched with `extra` (and env), a container on each. */
async function weftPair(
  extra: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ cluster: Cluster; w1: string; w2: string; ip2: string; ip6?: string; pids: number[] }> {
  const cluster = await Cluster.create(2, { env });
  const [a, b] = cluster.hosts;
  await a.launch([], ['--ipalloc-init', 'consensus=2', ...extra]);
  await b.launch([a.ip], ['--ipalloc-init', 'consensus=2', ...extra]);
  const w1 = await cluster.container('w1');
  const w2 = await cluster.container('w2');
  await a.weft(['attach', `netns:${w1}`]);
  // "10.32.0.2/12", and with --ipv6 "... fd77:6566:7400:8000::/48" after it
  const [ip2, ip6] = (await b.weft(['attach', `netns:${w2}`])).stdout
    .trim()
    .split(/\s+/)
    .map((c) => c.split('/')[0]);
  for (const to of [ip2, ...(ip6 ? [ip6] : [])])
    await eventually(
      `weft path up to ${to}`,
      async () => (await run('ip', ['netns', 'exec', w1, 'ping', '-c', '1', '-W', '1', to])).code === 0,
      20_000,
    );
  return { cluster, w1, w2, ip2, ...(ip6 ? { ip6 } : {}), pids: [a.routerPid()!, b.routerPid()!] };
}

/**
 * (g): IPv6 against IPv4 between the same two dual-stack containers, in rounds of alternating order:
 * throughput per round and its ratio, then the median and spread; RTT by ping for each.
 */
async function ipv6Row(label: string, extra: string[]): Promise<void> {
  const p = await weftPair(['--ipv6', ...extra], {});
  try {
    if (!p.ip6) throw new Error('the container got no IPv6 address');
    const v4: number[] = [];
    const v6: number[] = [];
    await alternating(
      async () => v4.push((await iperf(p.w2, p.w1, p.ip2, seconds)).gbit),
      async () => v6.push((await iperf(p.w2, p.w1, p.ip6!, seconds)).gbit),
    );
    const ratios = v6.map((x, i) => x / v4[i]);
    const [rtt4, rtt6] = [await rtt(p.w1, p.ip2), await rtt(p.w1, p.ip6)];
    console.log(
      `${label.padEnd(36)} IPv6 ${median(v6).toFixed(2)}, IPv4 ${median(v4).toFixed(2)} Gbit/s; IPv6/IPv4 median ${median(ratios).toFixed(3)} over ${rounds} rounds (spread ${Math.min(...ratios).toFixed(3)}-${Math.max(...ratios).toFixed(3)}); RTT ${rtt6.toFixed(0)} / ${rtt4.toFixed(0)} us`,
    );
  } finally {
    await p.cluster.cleanup();
  }
}

async function ipv6Rows(): Promise<void> {
  await ipv6Row('(g) fastdp, IPv6 vs IPv4', []);
  await ipv6Row('(g) sleeve, IPv6 vs IPv4', ['--no-fastdp']);
}

/**
 * (h): weft's fastdp over an IPv6 underlay (its second VXLAN device) against the hand-built kernel
 * VXLAN over IPv4 on the same hosts, at the same MTU, in rounds of alternating order.
 */
async function underlay6Row(): Promise<void> {
  const cluster = await Cluster.create(2);
  try {
    const [a, b] = cluster.hosts;
    for (const h of [a, b])
      await must('ip', ['-n', h.ns, 'addr', 'add', `fd00:198:18::${h.index}/64`, 'dev', 'eth0', 'nodad']);
    const { mtu, w1, w2, ip2, r1, r2, rip } = await weftAndHandBuilt(
      cluster,
      '[fd00:198:18::1]:6783',
      ['--host', 'fd00:198:18::1'],
      ['--host', 'fd00:198:18::2'],
    );
    // The weft row must be what it says: VXLAN over IPv6 in the kernel, not the sleeve.
    await eventually(
      'weft on fastdp over IPv6',
      async () =>
        (await a.report<Report>()).connections.some((c) => c.overlay === 'fastdp') &&
        (await a.exec('bridge', ['fdb', 'show', 'dev', 'vxlan-weft6'])).stdout.includes('dst fd00:198:18::2'),
      15_000,
    );
    const hand: number[] = [];
    const weft: number[] = [];
    await alternating(
      async () => hand.push((await iperf(r2, r1, rip, seconds)).gbit),
      async () => weft.push((await iperf(w2, w1, ip2, seconds)).gbit),
    );
    const ratios = weft.map((x, i) => x / hand[i]);
    console.log(
      `${'(h) fastdp over IPv6 vs (b) over IPv4'.padEnd(36)} ${median(weft).toFixed(2)} vs ${median(hand).toFixed(2)} Gbit/s (MTU ${mtu}); h/b median ${median(ratios).toFixed(3)} over ${rounds} rounds (spread ${Math.min(...ratios).toFixed(3)}-${Math.max(...ratios).toFixed(3)}); RTT ${(await rtt(w1, ip2)).toFixed(0)} / ${(await rtt(r1, rip)).toFixed(0)} us`,
    );
  } finally {
    await cluster.cleanup();
  }
}

/** Throughput, RTT, and the routers' CPU seconds per GB carried (sleeve rows). */
async function sleeveRow(extra: string[], env: NodeJS.ProcessEnv): Promise<[number, number, number, number]> {
  const p = await weftPair(extra, env);
  try {
    const cpu0 = p.pids.reduce((t, pid) => t + cpuSeconds(pid), 0);
    const { gbit, tcpRtt } = await iperf(p.w2, p.w1, p.ip2, seconds);
    const cpu = p.pids.reduce((t, pid) => t + cpuSeconds(pid), 0) - cpu0;
    const gb = (gbit * seconds) / 8;
    return [gbit, await rtt(p.w1, p.ip2), cpu / gb, tcpRtt];
  } finally {
    await p.cluster.cleanup();
  }
}

/**
 * (f): weft on OVS, and OVS's NORMAL switch as its anchor, built the same way: a container's veth on a
 * Linux bridge, a veth pair (offloads off, as weft does) from there into a netdev OVS bridge with a
 * VXLAN port; NORMAL's port has a fixed remote (another VNI and port). Two rounds each, alternating.
 */
async function ovsRows(): Promise<{ weft: [number, number]; normal: [number, number] }> {
  const cluster = await Cluster.create(2, { ovs: true });
  try {
    const [a, b] = cluster.hosts;
    await a.launch([], ['--ipalloc-init', 'consensus=2']);
    await b.launch([a.ip], ['--ipalloc-init', 'consensus=2']);
    await eventually(
      'on ovs',
      async () => (await a.report<Report>()).connections.some((c) => c.overlay === 'ovs'),
      20_000,
    );
    const mtu = (await a.report<Report>()).datapath!.mtu;
    const w1 = await cluster.container('w1');
    const w2 = await cluster.container('w2');
    await a.weft(['attach', `netns:${w1}`]);
    const ip2 = (await b.weft(['attach', `netns:${w2}`])).stdout.trim().split('/')[0];
    const refs: string[] = [];
    for (const [i, h] of [a, b].entries()) {
      const x = (args: string[]) => must('ip', ['-n', h.ns, ...args]);
      await x(['link', 'add', 'br-oref', 'type', 'bridge']);
      await x(['link', 'set', 'br-oref', 'up']);
      refs.push(await refContainer(cluster, h, `oref${i + 1}`, 'br-oref', `10.99.1.${i + 1}/24`, mtu));
      await x([
        'link',
        'add',
        'oref-br',
        'mtu',
        String(mtu),
        'type',
        'veth',
        'peer',
        'name',
        'oref-dp',
        'mtu',
        String(mtu),
      ]);
      for (const dev of ['oref-br', 'oref-dp'])
        await must('ip', [
          'netns',
          'exec',
          h.ns,
          'ethtool',
          '-K',
          dev,
          'tso',
          'off',
          'gso',
          'off',
          'gro',
          'off',
          'tx',
          'off',
        ]);
      await x(['link', 'set', 'oref-br', 'master', 'br-oref', 'up']);
      await x(['link', 'set', 'oref-dp', 'up']);
      const other = i === 0 ? b : a;
      await h.ovs!.vsctl([
        'add-br',
        'ovs-ref',
        '--',
        'set',
        'bridge',
        'ovs-ref',
        'datapath_type=netdev',
        '--',
        'add-port',
        'ovs-ref',
        'oref-dp',
        '--',
        'add-port',
        'ovs-ref',
        'oref-vx',
        '--',
        'set',
        'interface',
        'oref-vx',
        'type=vxlan',
        `options:remote_ip=${other.ip}`,
        'options:key=100',
        'options:dst_port=4790',
      ]);
    }
    await eventually(
      'weft path up',
      async () => (await run('ip', ['netns', 'exec', w1, 'ping', '-c', '1', '-W', '1', ip2])).code === 0,
      20_000,
    );
    await eventually(
      'NORMAL path up',
      async () => (await run('ip', ['netns', 'exec', refs[0], 'ping', '-c', '1', '-W', '1', '10.99.1.2'])).code === 0,
      20_000,
    );
    const weft: number[][] = [];
    const normal: number[][] = [];
    for (let round = 0; round < 2; round++) {
      normal.push([(await iperf(refs[1], refs[0], '10.99.1.2', seconds)).gbit, await rtt(refs[0], '10.99.1.2')]);
      weft.push([(await iperf(w2, w1, ip2, seconds)).gbit, await rtt(w1, ip2)]);
    }
    const mean = (rows: number[][], k: number) => rows.reduce((t, r) => t + r[k], 0) / rows.length;
    return { weft: [mean(weft, 0), mean(weft, 1)], normal: [mean(normal, 0), mean(normal, 1)] };
  } finally {
    await cluster.cleanup();
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces)');
  if (only === 'ipv6') return ipv6Rows();
  if (only === 'underlay6') return underlay6Row();
  const cluster = await Cluster.create(2);
  try {
    const [a, b] = cluster.hosts;
    const { mtu, w1, w2, ip2, r1, r2, rip } = await weftAndHandBuilt(cluster, a.ip, [], []);

    console.log(
      `datapath: one TCP flow (iperf3, ${seconds} s) and ping RTT (median of 200), two namespace hosts, overlay MTU ${mtu}`,
    );
    const rows: [string, number, number][] = [];
    rows.push(['(a) veth underlay', (await iperf(b.ns, a.ns, b.ip, seconds)).gbit, await rtt(a.ns, b.ip)]);
    const bs: number[] = [];
    const cs: number[] = [];
    const tcpRtts: number[] = [];
    await alternating(
      async () => bs.push((await iperf(r2, r1, rip, seconds)).gbit),
      async () => {
        const f = await iperf(w2, w1, ip2, seconds);
        cs.push(f.gbit);
        tcpRtts.push(f.tcpRtt);
      },
      (round) =>
        console.log(
          `round ${round + 1}: b ${bs[round].toFixed(2)}, c ${cs[round].toFixed(2)} Gbit/s, c/b ${(cs[round] / bs[round]).toFixed(3)}`,
        ),
    );
    rows.push(['(b) kernel VXLAN + bridge by hand', median(bs), await rtt(r1, rip)]);
    rows.push(['(c) weft fastdp', median(cs), await rtt(w1, ip2)]);
    for (const [label, gbit, us] of rows)
      console.log(
        `${label.padEnd(36)} ${gbit.toFixed(2).padStart(6)} Gbit/s   RTT ${us.toFixed(0).padStart(4)} us${label.startsWith('(a)') ? '' : ` (median of ${rounds} rounds)`}`,
      );
    const [ua, ub, uc] = rows;
    const ratios = cs.map((c, i) => c / bs[i]);
    console.log(`(c) TCP RTT under load: ${median(tcpRtts).toFixed(0)} us`);
    console.log(
      `fastdp c/b over ${rounds} rounds: median ${median(ratios).toFixed(3)}, spread ${Math.min(...ratios).toFixed(3)}-${Math.max(...ratios).toFixed(3)}`,
    );
    console.log(
      `ratios: throughput c/b ${median(ratios).toFixed(3)}, c/a ${(uc[1] / ua[1]).toFixed(3)}; RTT c/b ${(uc[2] / ub[2]).toFixed(3)}, c/a ${(uc[2] / ua[2]).toFixed(3)}`,
    );
    await cluster.cleanup();
    if (only === 'kernel') return;
    if (only === 'ovs') {
      await printOvs(ub[1], ub[2]);
      return;
    }
    const sleeves: [string, number, number, number, number][] = [];
    sleeves.push(['(d) weft sleeve', ...(await sleeveRow(['--no-fastdp'], {}))]);
    sleeves.push(['(e) weft sleeve, encrypted', ...(await sleeveRow([], { WEFT_PASSWORD: 'bench password' }))]);
    // The reference path (sealing in JavaScript) in the same run: what the addon's sealing gives.
    sleeves.push([
      '(e) encrypted, WEFT_SLEEVE_FAST=off',
      ...(await sleeveRow([], { WEFT_PASSWORD: 'bench password', WEFT_SLEEVE_FAST: 'off' })),
    ]);
    const plain = sleeves[0][1];
    for (const [label, gbit, us, cpu, tcpRtt] of sleeves) {
      console.log(
        `${label.padEnd(36)} ${gbit.toFixed(2).padStart(6)} Gbit/s   RTT ${us.toFixed(0).padStart(4)} us (ping), ${tcpRtt.toFixed(0)} us (TCP under load)   ${cpu.toFixed(2)} CPU s/GB (both routers)   vs b ${(gbit / ub[1]).toFixed(3)}${label.startsWith('(e)') ? `, vs d ${(gbit / plain).toFixed(3)}` : ''}`,
      );
    }
    if (only !== 'sleeve') await printOvs(ub[1], ub[2]);
    if (only === '') {
      await ipv6Rows();
      await underlay6Row();
    }
  } finally {
    await cluster.cleanup();
  }
}

async function printOvs(kernelGbit: number, kernelRtt: number): Promise<void> {
  const o = await ovsRows();
  console.log(
    `${'(f) OVS NORMAL (anchor), netdev'.padEnd(36)} ${o.normal[0].toFixed(2).padStart(6)} Gbit/s   RTT ${o.normal[1].toFixed(0).padStart(4)} us`,
  );
  console.log(
    `${'(f) weft on OVS, netdev'.padEnd(36)} ${o.weft[0].toFixed(2).padStart(6)} Gbit/s   RTT ${o.weft[1].toFixed(0).padStart(4)} us`,
  );
  console.log(
    `ratios: throughput f/NORMAL ${(o.weft[0] / o.normal[0]).toFixed(3)}, f/b ${(o.weft[0] / kernelGbit).toFixed(3)}; RTT f/NORMAL ${(o.weft[1] / o.normal[1]).toFixed(3)}, f/b ${(o.weft[1] / kernelRtt).toFixed(3)}`,
  );
}

await main();
