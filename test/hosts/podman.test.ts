// A real CNI runtime: podman (Debian's, network_backend "cni") runs busybox containers on two
// namespace hosts through the plugin `weft setup-cni` installs, chained with the reference portmap
// and bandwidth plugins. podman runs in each host's network namespace only (nsenter --net), sharing
// the mount namespace with the routers as on a real host; its storage, config and CNI directories are
// the test's own.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { must, run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';

const REFERENCE_PLUGINS = '/usr/lib/cni';
const IMAGE = 'localhost/weft-test-busybox:1';
const missing = ['/usr/bin/podman', '/usr/sbin/runc', '/usr/bin/busybox', `${REFERENCE_PLUGINS}/portmap`].filter(
  (p) => !existsSync(p),
);

let cluster: Cluster | null = null;
let work: string | null = null;
afterEach(async () => {
  if (work) {
    for (const h of cluster?.hosts ?? []) await podman(h, ['rm', '-af', '-t', '0']).catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
    work = null;
  }
  await cluster?.cleanup();
  cluster = null;
});

/** podman in a host's network namespace, with the test's own storage and config. */
async function podman(h: Host, args: string[]) {
  return run(
    'nsenter',
    [
      `--net=/run/netns/${h.ns}`,
      'podman',
      '--root',
      join(work!, 'storage'),
      '--runroot',
      join(work!, 'run'),
      '--storage-driver',
      'vfs',
      '--cni-config-dir',
      join(work!, 'net.d'),
      ...args,
    ],
    { env: { ...process.env, CONTAINERS_CONF: join(work!, 'containers.conf') }, timeoutMs: 120_000 },
  );
}

async function mustPodman(h: Host, args: string[]): Promise<string> {
  const r = await podman(h, args);
  if (r.code !== 0) throw new Error(`podman ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** The test's podman setup: a busybox image from the host's busybox-static, runc and cgroupfs. */
async function preparePodman(h: Host): Promise<string> {
  work = mkdtempSync(join(tmpdir(), 'weft-podman-'));
  const bin = join(work, 'bin');
  mkdirSync(bin);
  // A node's CNI bin dir: the reference plugins weft chains, then weft's own (from setup-cni).
  for (const p of ['portmap', 'bandwidth', 'loopback']) symlinkSync(join(REFERENCE_PLUGINS, p), join(bin, p));
  writeFileSync(
    join(work, 'containers.conf'),
    [
      '[containers]',
      'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',
      '[network]',
      'network_backend = "cni"',
      `cni_plugin_dirs = ["${bin}"]`,
      '[engine]',
      'runtime = "runc"',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      '[engine.runtimes]',
      'runc = ["/usr/sbin/runc"]',
      '',
    ].join('\n'),
  );
  const root = join(work, 'image');
  for (const d of ['bin', 'www', 'tmp', 'etc']) mkdirSync(join(root, d), { recursive: true });
  await must('cp', ['/usr/bin/busybox', join(root, 'bin', 'busybox')]);
  for (const t of ['sh', 'httpd', 'wget', 'sleep', 'ip', 'cat', 'timeout'])
    symlinkSync('busybox', join(root, 'bin', t));
  writeFileSync(join(root, 'www', 'index.html'), 'hello from a pod\n');
  await must('tar', ['-C', root, '-cf', join(work, 'image.tar'), '.']);
  await mustPodman(h, ['import', join(work, 'image.tar'), IMAGE]);
  return bin;
}

/** An HTTP GET from a host's namespace; the body, or why not. */
async function httpGet(ns: string, url: string): Promise<string> {
  const r = await run(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      '-e',
      `fetch(${JSON.stringify(url)},{signal:AbortSignal.timeout(3000)}).then(r=>r.text()).then(t=>process.stdout.write(t),e=>{process.stderr.write(String(e));process.exit(1)})`,
    ],
    { timeoutMs: 10_000 },
  );
  return r.code === 0 ? r.stdout : `failed: ${r.stderr.trim()}`;
}

describeAsRoot('podman through weft setup-cni', () => {
  it('containers on two hosts talk; one reaches another host through its gateway, is reached from its host and through -p (portmap); rm frees it; a router restart changes none of it', async () => {
    expect(
      missing,
      'install podman containernetworking-plugins runc busybox-static (the README test command does)',
    ).toEqual([]);
    cluster = await Cluster.create(2, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
    });
    const [a, b] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    const bin = await preparePodman(a);
    const setup = await a.weft(['setup-cni', '--bin-dir', bin, '--conf-dir', join(work!, 'net.d')]);
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toMatch(/static binary/);
    expect(setup.stdout).toMatch(/chaining portmap, bandwidth/);

    const run1 = ['run', '-d', '--network', 'weft', '-p', '8080:80', IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www'];
    const c1 = await mustPodman(a, [...run1.slice(0, 1), '--name', 'c1', ...run1.slice(1)]);
    const c2 = await mustPodman(b, ['run', '-d', '--name', 'c2', ...run1.slice(1)]);
    const ipOf = async (h: Host, c: string) =>
      mustPodman(h, ['inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', c]);
    const [ip1, ip2] = [await ipOf(a, c1), await ipOf(b, c2)];
    expect(ip1).toMatch(/^10\.\d+\.\d+\.\d+$/);
    expect(ip2).toMatch(/^10\.\d+\.\d+\.\d+$/);
    const wget = (h: Host, c: string, url: string) =>
      podman(h, ['exec', c, 'timeout', '5', 'wget', '-q', '-O', '-', url]); // (busybox wget -T crashes)

    const checks = async (when: string) => {
      // Across hosts over the overlay.
      await eventually(
        `${when}: c2 on B fetches from c1 on A over the overlay`,
        async () => {
          const r = await wget(b, 'c2', `http://${ip1}/`);
          if (r.stdout !== 'hello from a pod\n') throw new Error(`wget exit ${r.code}: ${r.stderr.trim()}`);
          return true;
        },
        20_000,
        500,
      );
      // c1's default route: out through A (NAT) to B's underlay address, where portmap hands it to c2.
      expect((await wget(a, 'c1', `http://${b.ip}:8080/`)).stdout, `${when}: c1 -> B:8080`).toBe('hello from a pod\n');
      // Its own host reaches it, and -p 8080:80 on A reaches it from B's host.
      expect(await httpGet(a.ns, `http://${ip1}/`), `${when}: host A -> c1`).toBe('hello from a pod\n');
      expect(await httpGet(b.ns, `http://${a.ip}:8080/`), `${when}: B -> A:8080 (portmap)`).toBe('hello from a pod\n');
    };
    await checks('after start');

    // The router restarted under running containers: all of it still works.
    expect((await a.weft(['stop'])).code).toBe(0);
    await a.launch([b.ip]);
    await checks('after a router restart');

    // podman rm runs DEL: the address is free again.
    const ident = (await a.report<Report>()).ipam.owned.find((o) => o.addresses.includes(ip1))?.ident;
    expect(ident).toMatch(/^cni:/);
    await mustPodman(a, ['rm', '-f', '-t', '0', 'c1']);
    expect((await a.report<Report>()).ipam.owned.some((o) => o.ident === ident)).toBe(false);
    expect((await a.report<Report>()).datapath?.localEndpoints.some((e) => e.container === ident)).toBe(false);
  });

  it('dual-stack (--ipv6 --ipv6-nat): pods get an address and a default route of each family, talk over IPv6 across hosts, and reach the outside over IPv6 as their host', async () => {
    expect(missing, 'install podman containernetworking-plugins runc busybox-static').toEqual([]);
    cluster = await Cluster.create(2, {
      routerArgs: ['--ipalloc-init', 'consensus=2', '--ipv6', '--ipv6-nat'],
    });
    const [a, b] = cluster.hosts;
    for (const h of [a, b])
      await must('ip', ['-n', h.ns, 'addr', 'add', `fd00:198:18::${h.index}/64`, 'dev', 'eth0', 'nodad']);
    await a.launch();
    await b.launch([a.ip]);
    const bin = await preparePodman(a);
    const setup = await a.weft(['setup-cni', '--bin-dir', bin, '--conf-dir', join(work!, 'net.d')]);
    expect(setup.code, setup.stderr).toBe(0);
    const httpd = ['run', '-d', '--network', 'weft', IMAGE, 'httpd', '-f', '-p', '80', '-h', '/www'];
    const c1 = await mustPodman(a, [httpd[0], '--name', 'd1', ...httpd.slice(1)]);
    const c2 = await mustPodman(b, [httpd[0], '--name', 'd2', ...httpd.slice(1)]);
    const ip6Of = async (h: Host, c: string) =>
      mustPodman(h, ['inspect', '-f', '{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}', c]);
    const [six1, six2] = [await ip6Of(a, c1), await ip6Of(b, c2)];
    expect(six1).toMatch(/^fd77:6566:7400:/);
    expect(six2).toMatch(/^fd77:6566:7400:/);
    // The pod's default routes, one per family, through its host.
    const routes6 = await mustPodman(a, ['exec', 'd1', 'ip', '-6', 'route', 'show', 'default']);
    expect(routes6).toMatch(/^default via fd77:6566:7400:/);
    expect(await mustPodman(a, ['exec', 'd1', 'ip', '-4', 'route', 'show', 'default'])).toMatch(/^default via 10\./);
    const wget = (h: Host, c: string, url: string) =>
      podman(h, ['exec', c, 'timeout', '5', 'wget', '-q', '-O', '-', url]);
    await eventually(
      'd2 on B fetches from d1 on A over IPv6',
      async () => (await wget(b, 'd2', `http://[${six1}]/`)).stdout === 'hello from a pod\n',
      20_000,
      500,
    );
    // Out over IPv6 through A, masqueraded: the server on B's uplink sees A's address.
    const server = `require('node:http').createServer((q, r) => r.end(q.socket.remoteAddress + '\\n')).listen(7500, 'fd00:198:18::2')`;
    const srv = spawn('ip', ['netns', 'exec', b.ns, process.execPath, '-e', server], { stdio: 'ignore' });
    try {
      await eventually(
        'd1 reaches the outside over IPv6 as host A',
        async () => (await wget(a, 'd1', 'http://[fd00:198:18::2]:7500/')).stdout === 'fd00:198:18::1\n',
        15_000,
        500,
      );
    } finally {
      srv.kill('SIGKILL'); // ip netns exec execs node: the pid is the server's
    }
    // A second network of IPv6-only pods (setup-cni --ip-families IPv6): one address, one default
    // route and one nameserver, all IPv6; it reaches the dual-stack pod on B over IPv6.
    const only6 = await a.weft([
      'setup-cni',
      '--bin-dir',
      bin,
      '--conf-dir',
      join(work!, 'net.d'),
      '--name',
      'weft6',
      '--ip-families',
      'IPv6',
    ]);
    expect(only6.code, only6.stderr).toBe(0);
    await mustPodman(a, ['run', '-d', '--name', 'd3', '--network', 'weft6', IMAGE, 'sleep', '600']);
    expect(await mustPodman(a, ['exec', 'd3', 'ip', '-4', 'addr', 'show', 'dev', 'eth0'])).toBe('');
    expect(await mustPodman(a, ['exec', 'd3', 'ip', '-6', 'route', 'show', 'default'])).toMatch(
      /^default via fd77:6566:7400:/,
    );
    const conf = await mustPodman(a, ['exec', 'd3', 'cat', '/etc/resolv.conf']);
    expect(conf).toContain('nameserver fd77:6566:7453::53');
    expect(conf).not.toContain('169.254.83.83');
    await eventually(
      'the IPv6-only pod on A fetches from d2 on B',
      async () => (await wget(a, 'd3', `http://[${six2}]/`)).stdout === 'hello from a pod\n',
      20_000,
      500,
    );
  });
});
