// Real routers in network namespaces, driven through the weft CLI.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';

const FAST = ['--heartbeat-interval', '500ms', '--gossip-interval', '1s'];
let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

async function hosts(n: number, extra: string[] = []): Promise<Host[]> {
  cluster = await Cluster.create(n, { routerArgs: [...FAST, ...extra] });
  return cluster.hosts;
}

const report = (h: Host) => h.report<Report>();
const established = (r: Report, peer: string) =>
  r.connections.some((c) => c.peer === peer && c.state === 'established');

/** The part of a report every host must agree on: who the peers are and their connections. */
function topologyView(r: Report): string {
  return JSON.stringify(
    r.peers.map((p) => ({ ...p, connections: p.connections.map((c) => [c.name, c.outbound, c.established]).sort() })),
  );
}

async function converged(hs: Host[], peers: number): Promise<Report[] | false> {
  const rs = await Promise.all(hs.map(report));
  const views = rs.map(topologyView);
  return rs.every((r) => r.peers.length === peers) && views.every((v) => v === views[0]) ? rs : false;
}

describeAsRoot('three namespace hosts', () => {
  it('A, B A, C B: discovery connects A to C, and status shows all three', async () => {
    const [a, b, c] = await hosts(3);
    await a.launch();
    await b.launch([a.ip]);
    await c.launch([b.ip]);
    const ra = await eventually('A connected to B and C', async () => {
      const r = await report(a);
      const names = r.peers.map((p) => p.name);
      return names.length === 3 && names.every((n) => n === r.name || established(r, n)) ? r : false;
    });
    const status = await a.weft(['status']);
    expect(status.stdout).toMatch(/Peers: 3 \(with 6 established connections\)/);
    const peers = await a.weft(['status', 'peers']);
    for (const h of [a, b, c]) expect(peers.stdout).toContain(`(${h.nickname})`);
    const conns = await a.weft(['status', 'connections']);
    expect(conns.stdout.trim().split('\n')).toHaveLength(2);
    expect(conns.stdout).toMatch(/established/);
    expect(ra.targets.filter((t) => t.direct)).toHaveLength(0);
    const targets = await b.weft(['status', 'targets']);
    expect(targets.stdout.trim()).toBe(`${a.ip}:6783`);
  });

  it('with --no-discovery, A reaches C through B only', async () => {
    const [a, b, c] = await hosts(3, ['--no-discovery']);
    await a.launch();
    await b.launch([a.ip]);
    await c.launch([b.ip]);
    const [ra] = await eventually('topologies to converge', () => converged([a, b, c], 3));
    const rb = await report(b);
    const rc = await report(c);
    expect(established(ra, rc.name)).toBe(false);
    expect(ra.connections).toHaveLength(1);
    expect(ra.unicastRoutes).toContainEqual({ dest: rc.name, via: rb.name });
    const status = await a.weft(['status']);
    expect(status.stdout).toMatch(/PeerDiscovery: disabled/);
  });

  it('a killed router is noticed, and comes back as the same peer', async () => {
    const [a, b, c] = await hosts(3);
    await a.launch();
    await b.launch([a.ip]);
    await c.launch([b.ip]);
    await eventually('full mesh', async () => {
      const r = await converged([a, b, c], 3);
      return r && r.every((x) => x.connections.filter((k) => k.state === 'established').length === 2);
    });
    const before = await report(b);
    await b.kill();
    for (const h of [a, c]) {
      await eventually(`${h.nickname} to notice B is gone`, async () => {
        const r = await report(h);
        return !established(r, before.name) && !r.peers.some((p) => p.name === before.name);
      });
    }
    expect((await b.weft(['status'])).stderr).toMatch(/no weft router is running/);
    await b.launch([a.ip]);
    const after = await report(b);
    expect(after.name).toBe(before.name);
    expect(after.uid).not.toBe(before.uid);
    await eventually("B back in everyone's topology", async () => {
      const rs = await converged([a, b, c], 3);
      return rs && rs.every((r) => r.peers.find((p) => p.name === before.name)?.uid === after.uid);
    });
  });

  it('partition and heal: the topologies converge to the same view on all hosts', async () => {
    const [a, b, c] = await hosts(3);
    await a.launch();
    await b.launch([a.ip]);
    await c.launch([b.ip]);
    await eventually('converge', () => converged([a, b, c], 3));
    await c.cut();
    await eventually('A and B see two peers', () => converged([a, b], 2));
    await eventually('C sees itself alone', async () => (await report(c)).peers.length === 1);
    await c.restore();
    const rs = await eventually('converged again after healing', () => converged([a, b, c], 3), 40_000);
    expect(new Set(rs.map(topologyView)).size).toBe(1);
  });

  it('a different password is refused at once, and status says why', async () => {
    const [a, b] = await hosts(2);
    const pwFile = join(cluster!.workDir, 'pw');
    writeFileSync(pwFile, 'correct horse\n', { mode: 0o600 });
    await a.launch([], ['--password-file', pwFile]);
    await b.launch([a.ip], [], { WEFT_PASSWORD: 'battery staple' });
    const line = await eventually(
      'B to show the failed connection',
      async () => {
        const r = await b.weft(['status', 'connections']);
        return r.stdout.split('\n').find((l) => l.includes('failed'));
      },
      5000,
      100,
    );
    expect(line).toMatch(
      new RegExp(
        `-> ${a.ip.replaceAll('.', '\\.')}:6783 +failed .*authentication failed: the remote uses a different password`,
      ),
    );
    const onA = await a.weft(['status', 'connections']);
    expect(onA.stdout).toMatch(/<- 198\.18\.0\.2:\d+ +failed .*different password/);
    // Same password from the environment: accepted.
    await b.weft(['stop']);
    await b.launch([a.ip], [], { WEFT_PASSWORD: 'correct horse' });
    await eventually('connected with the right password', async () =>
      established(await report(a), (await report(b)).name),
    );
    // The password never shows in process arguments or the report.
    const ps = await a.exec('ps', ['-eo', 'args']);
    expect(ps.stdout).not.toMatch(/correct horse|battery staple/);
    expect(JSON.stringify(await report(a))).not.toMatch(/correct horse/);
  });
});
