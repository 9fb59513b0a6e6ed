// Seeing the network: Prometheus metrics from a three-host cluster, and the
// topology page rendered by Debian's chromium (driven by playwright-core).
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, FAST_THREE_HOSTS, eventually, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { run } from '../harness/exec.js';
import { metric } from '../harness/prometheus.js';

const CHROMIUM = '/usr/bin/chromium';
let cluster: Cluster;
const containerNs: string[] = [];

/** GET a URL from inside a host's namespace (its loopback is its own). */
async function fetchIn(h: Host, url: string): Promise<string> {
  const r = await h.exec(process.execPath, [
    '-e',
    `fetch(${JSON.stringify(url)}).then(async (r) => { process.stdout.write(await r.text()); process.exit(r.ok ? 0 : 1); }, (e) => { console.error(String(e)); process.exit(2); })`,
  ]);
  if (r.code !== 0) throw new Error(`GET ${url} on ${h.nickname}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

describeAsRoot('metrics and the topology page', () => {
  beforeAll(async () => {
    cluster = await Cluster.create(3, {
      // Dual-stack: both families show in the metrics and on the page.
      routerArgs: [...FAST_THREE_HOSTS, '--ipv6'],
    });
    const [a, b, c] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    await c.launch([b.ip]);
    for (const [h, name] of [
      [a, 'one'],
      [b, 'two'],
      [c, 'three'],
    ] as const) {
      const ns = await cluster.container(name);
      containerNs.push(ns);
      const r = await h.weft(['attach', '-h', `${name}.weft.local`, `netns:${ns}`]);
      if (r.code !== 0) throw new Error(`attach on ${h.nickname}: ${r.stderr}`);
    }
    await eventually(
      'A on fastdp to both others',
      async () => (await a.report<Report>()).connections.filter((x) => x.overlay === 'fastdp').length === 2,
      30_000,
      500,
    );
  }, 120_000);
  afterAll(async () => {
    await cluster?.cleanup();
  });

  it('metrics show the peers, connections by overlay, allocations, names and gossip by channel', async () => {
    const [a] = cluster.hosts;
    // Three names, each with an address of each family.
    const text = await eventually('metrics with three names', async () => {
      const t = await fetchIn(a, 'http://127.0.0.1:6782/metrics');
      return metric(t, 'weft_dns_entries') === 6 ? t : null;
    });
    expect(metric(text, 'weft_peers')).toBe(3);
    expect(metric(text, 'weft_connections', { state: 'established', overlay: 'fastdp' })).toBe(2);
    expect(metric(text, 'weft_connections_underlay', { family: 'ipv4', overlay: 'fastdp' })).toBe(2);
    expect(metric(text, 'weft_container_addresses', { family: 'ipv4' })).toBe(1);
    expect(metric(text, 'weft_container_addresses', { family: 'ipv6' })).toBe(1);
    expect(metric(text, 'weft_ipam6_addresses', { state: 'allocated_here' })).toBe(1);
    expect(metric(text, 'weft_ipam_addresses', { state: 'allocated_here' })).toBe(1);
    expect(metric(text, 'weft_ipam_pending_requests')).toBe(0);
    expect(metric(text, 'weft_gossip_messages_total', { channel: 'topology', direction: 'sent' })).toBeGreaterThan(0);
    expect(metric(text, 'weft_gossip_bytes_total', { channel: 'ipam', direction: 'received' })).toBeGreaterThan(0);
    expect(metric(text, 'weft_fdb_entries_programmed_total', { op: 'added' })).toBeGreaterThanOrEqual(4);
    expect(text).toMatch(/^# TYPE weft_sleeve_frames_total counter$/m);
    expect(text).toMatch(/^weft_process_resident_memory_bytes \d+/m);
    // The free addresses and this peer's share add up to the range.
    const range = metric(text, 'weft_ipam_addresses', { state: 'range' })!;
    expect(range).toBe(2 ** 20);
    expect(metric(text, 'weft_ipam_addresses', { state: 'free' })).toBeLessThan(range);
  });

  it('the HTTP API and the metrics are not reachable from a container, at any address of its host', async () => {
    const [a] = cluster.hosts;
    const probe = async (url: string) =>
      (
        await run('ip', [
          'netns',
          'exec',
          containerNs[0],
          process.execPath,
          '-e',
          `fetch(${JSON.stringify(url)}, { signal: AbortSignal.timeout(2000) }).then(() => console.log('open'), (e) => console.log('closed', e.cause?.code ?? e.name)).finally(() => process.exit(0))`,
        ])
      ).stdout.trim();
    for (const addr of ['169.254.83.83', a.ip, '[fd77:6566:7453::53]']) {
      expect(await probe(`http://${addr}:6784/status`)).toMatch(/^closed/);
      expect(await probe(`http://${addr}:6782/metrics`)).toMatch(/^closed/);
    }
    // From the host itself both answer.
    expect(await fetchIn(a, 'http://127.0.0.1:6784/status')).toMatch(/Name:/);
    expect(await fetchIn(a, 'http://127.0.0.1:6782/metrics')).toMatch(/weft_peers/);
  });

  it("every status view has --json with that view's part of the report", async () => {
    const [a] = cluster.hosts;
    const json = async (view: string) => JSON.parse((await a.weft(['status', view, '--json'])).stdout) as unknown;
    const conns = (await json('connections')) as { overlay: string }[];
    expect(conns.map((c) => c.overlay)).toEqual(['fastdp', 'fastdp']);
    expect(((await json('peers')) as unknown[]).length).toBe(3);
    expect((await json('ipam')) as { range: string }).toMatchObject({ range: '10.32.0.0/12' });
    expect(((await json('dns')) as { entries: unknown[] }).entries.length).toBe(6);
    expect(Array.isArray(await json('targets'))).toBe(true);
  });

  it('the topology page draws three peers and their connections, coloured by overlay', async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`);
    const [a] = cluster.hosts;
    // The browser runs inside host A's namespace, where the router's API listens on 127.0.0.1.
    const wrapper = join(cluster.workDir, 'chromium-in-a');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${a.ns} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    const browser = await chromium.launch({
      executablePath: wrapper,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
      await page.goto('http://127.0.0.1:6784/ui');
      await page.waitForFunction(
        () =>
          document.querySelectorAll('#graph g.peer').length === 3 &&
          document.querySelectorAll('#graph line.edge').length === 3,
        null,
        { timeout: 20_000 },
      );
      const peers = await page.$$eval('#graph g.peer text', (ts) => ts.map((t) => t.textContent).sort());
      expect(peers).toEqual(['host1', 'host2', 'host3']);
      const overlays = await page.$$eval('#graph line.edge', (ls) =>
        ls.map((l) => l.getAttribute('data-overlay')).sort(),
      );
      expect(overlays).toEqual(['', 'fastdp', 'fastdp']); // A's two connections; B-C is between other peers
      expect(await page.textContent('#dns')).toContain('three.weft.local');
      expect(await page.textContent('#ring')).toMatch(/host1.*%/);
      // Both families: the IPv6 ring, and each connection's underlay address.
      expect(await page.isVisible('#ring6')).toBe(true);
      expect(await page.textContent('#range6')).toContain('fd77:6566:7400::/48');
      expect(await page.textContent('#conns')).toContain(cluster.hosts[1].ip);
      mkdirSync('test-artifacts', { recursive: true });
      await page.screenshot({ path: join('test-artifacts', 'topology-page.png'), fullPage: true });
    } finally {
      await browser.close();
    }
  });
});
