// weft with a real Docker engine on each of two namespace hosts: `weft launch`
// runs the router container, `docker network create -d weft` and `docker run
// --net` give containers overlay addresses that work across hosts and resolve by
// name, `docker rm -f` frees a container's address and name everywhere, `weft
// attach` takes Docker names and reattaches restarted containers, a service over
// labelled containers is reached by name through its VIP, and `weft stop`
// / `weft reset` leave nothing behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../lib/project-root.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { DockerHost, dockerInstalled } from '../harness/docker-host.js';
import { buildRootfs } from '../../plugin/image.js';
import { isRoot } from '../harness/root.js';
import { run } from '../harness/exec.js';

const missing = !isRoot ? 'needs root' : dockerInstalled();
const IMAGE = 'weft/router:0.1.0';

describe.skipIf(missing !== null)('Docker: router container, network plugin, events, attach', () => {
  let cluster: Cluster;
  let a: Host;
  let b: Host;
  let da: DockerHost;
  let db: DockerHost;

  beforeAll(async () => {
    // Dual-stack containers (--ipv6): weftnet has an IPv6 subnet too.
    cluster = await Cluster.create(2, { routerArgs: ['--ipv6'] });
    [a, b] = cluster.hosts;
    const rootfs = buildRootfs();
    try {
      [da, db] = await Promise.all([DockerHost.start(a), DockerHost.start(b)]);
      await Promise.all([da.loadImage(rootfs), db.loadImage(rootfs)]);
    } finally {
      rmSync(rootfs, { recursive: true, force: true });
    }
  }, 180_000);

  afterAll(async () => {
    for (const d of [da, db]) await d?.stop();
    await cluster?.cleanup();
  }, 120_000);

  /** A long-running workload container from the router image (it carries sh, ping, getent and node). */
  async function workload(d: DockerHost, name: string, extra: string[], cmd = ['sleep', '600']): Promise<string> {
    return d.mustDocker(['run', '-d', '--name', name, ...extra, '--entrypoint', cmd[0], IMAGE, ...cmd.slice(1)]);
  }

  async function dnsArgs(h: Host): Promise<string[]> {
    const r = await h.weft(['dns-args']);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().split(/\s+/);
  }

  it('weft launch runs the router as a container (host network and pid, no --privileged) on both hosts', async () => {
    const ra = await a.launch();
    expect(ra.stdout).toMatch(/container weft/);
    await b.launch([a.ip]);
    for (const d of [da, db]) {
      const c = await d.api.inspect('weft');
      expect(c.State.Running).toBe(true);
      expect(c.HostConfig?.Privileged).toBe(false);
    }
    const st = await a.weft(['status']);
    expect(st.stdout).toMatch(
      /Docker: engine 20\.10[^,]*, network plugin "weft" at \/run\/docker\/plugins\/weft\.sock/,
    );
    await eventually('the two routers connected', async () =>
      (await a.weft(['status', 'peers'])).stdout.includes('host2'),
    );
    // The image carries the command helper: the router runs its ip and nft through it (host pid namespace).
    const pid = (JSON.parse(readFileSync(join(a.dataDir, 'router.json'), 'utf8')) as { pid: number }).pid;
    const helpers = readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
          const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
          return ppid === pid && readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('weft-exec');
        } catch {
          return false; // gone meanwhile
        }
      });
    expect(helpers.length).toBeGreaterThan(0);
  }, 90_000);

  it('containers on a weft network (dual-stack) ping, talk TCP over both families across hosts and resolve each other by name', async () => {
    for (const d of [da, db]) {
      const r = await d.docker(['network', 'create', '-d', 'weft', '--ipam-driver', 'weft', '--ipv6', 'weftnet']);
      expect(r.code, r.stderr).toBe(0);
    }
    // A second network asking for the same (default) subnet gets a clear error, not a dockerd loop.
    const again = await da.docker(['network', 'create', '-d', 'weft', '--ipam-driver', 'weft', 'other'], 30_000);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/already used by another weft network/);

    await workload(da, 'c1', ['--net', 'weftnet', ...(await dnsArgs(a))]);
    await workload(
      db,
      'c2',
      ['--net', 'weftnet', ...(await dnsArgs(b))],
      ['node', '-e', "require('net').createServer((s) => s.pipe(s)).listen(7000)"],
    );
    const ip2 = (
      await db.mustDocker(['inspect', '-f', '{{.NetworkSettings.Networks.weftnet.IPAddress}}', 'c2'])
    ).trim();
    expect(ip2).toMatch(/^10\.(3[2-9]|4[0-7])\./);
    const ping = await eventually(
      'c1 pings c2 across hosts',
      async () => {
        const r = await da.docker(['exec', 'c1', 'ping', '-c', '1', '-W', '1', ip2]);
        return r.code === 0 ? r : null;
      },
      20_000,
    );
    expect(ping.stdout).toMatch(/1 received/);
    const tcp = await da.docker([
      'exec',
      'c1',
      'node',
      '-e',
      `const s = require('net').connect(7000, '${ip2}', () => s.write('over weft')); s.on('data', (d) => { console.log(String(d)); s.end(); });`,
    ]);
    expect(tcp.stdout.trim()).toBe('over weft');
    const dns = await eventually(
      'c2 resolves from c1',
      async () => {
        const r = await da.docker(['exec', 'c1', 'getent', 'ahostsv4', 'c2']);
        return r.code === 0 ? r.stdout : null;
      },
      15_000,
    );
    expect(dns.split(/\s+/)[0]).toBe(ip2);
    // IPv6: Docker asked weft's IPAM for an IPv6 pool and address; TCP over IPv6 across hosts, and AAAA.
    const ip6 = (
      await db.mustDocker(['inspect', '-f', '{{.NetworkSettings.Networks.weftnet.GlobalIPv6Address}}', 'c2'])
    ).trim();
    expect(ip6).toMatch(/^fd77:6566:7400:/);
    const tcp6 = await eventually(
      'c1 talks TCP to c2 over IPv6',
      async () => {
        const r = await da.docker([
          'exec',
          'c1',
          'node',
          '-e',
          `const s = require('net').connect(7000, '${ip6}', () => s.write('over IPv6')); s.on('data', (d) => { console.log(String(d)); process.exit(0); }); s.on('error', () => process.exit(1)); setTimeout(() => process.exit(1), 2000);`,
        ]);
        return r.code === 0 ? r.stdout.trim() : null;
      },
      20_000,
    );
    expect(tcp6).toBe('over IPv6');
    const aaaa = await eventually(
      'c2 resolves to its IPv6 address from c1',
      async () => {
        const r = await da.docker(['exec', 'c1', 'getent', 'ahostsv6', 'c2']);
        return r.code === 0 ? r.stdout : null;
      },
      15_000,
    );
    expect(aaaa.split(/\s+/)[0]).toBe(ip6);
  }, 120_000);

  it('services over a container labelled weft.group, and over one named by its Docker name, are reached by name from a plugin container on the other host', async () => {
    await workload(
      db,
      'c5',
      ['--net', 'weftnet', '--label', 'weft.group=echo', ...(await dnsArgs(b))],
      ['node', '-e', "require('net').createServer((s) => s.on('data', () => s.write('c5'))).listen(7100)"],
    );
    /** What c1 gets back from NAME.weft.local:7100: the backend's answer and the address it talked to. */
    const reach = (name: string) =>
      eventually(
        `c1 reaches ${name}.weft.local`,
        async () => {
          const r = await da.docker([
            'exec',
            'c1',
            'node',
            '-e',
            `const s = require('net').connect(7100, '${name}.weft.local', () => s.write('x')); s.on('data', (d) => { console.log(String(d) + ' ' + s.remoteAddress); process.exit(0); }); s.on('error', () => process.exit(1)); setTimeout(() => process.exit(1), 2000);`,
          ]);
          return r.code === 0 ? r.stdout.trim() : null;
        },
        20_000,
      );
    const created = await a.weft(['service', 'create', 'echo', '--group', 'echo']);
    expect(created.code, created.stderr).toBe(0);
    // Answered by the backend, seen by the client as a VIP: the IPv6 one where glibc prefers IPv6 (its
    // default table ranks a unique-local IPv6 address above IPv4), else the IPv4 one.
    const vips = (out: string) =>
      out
        .trim()
        .split(/\s+/)
        .slice(1, 3)
        .filter((v) => !v.startsWith('('));
    expect(vips(created.stdout)).toHaveLength(2);
    expect(vips(created.stdout).map((v) => `c5 ${v}`)).toContain(await reach('echo'));
    // A backend named by its Docker name, on the engine that runs it.
    const byName = await b.weft(['service', 'create', 'echo2', '--backend', 'c5']);
    expect(byName.code, byName.stderr).toBe(0);
    expect(vips(byName.stdout).map((v) => `c5 ${v}`)).toContain(await reach('echo2'));
    for (const s of ['echo', 'echo2']) expect((await a.weft(['service', 'remove', s])).code).toBe(0);
    await db.mustDocker(['rm', '-f', 'c5']);
  }, 60_000);

  it('docker rm -f frees the address and removes the name on both hosts', async () => {
    const ip2 = (
      await db.mustDocker(['inspect', '-f', '{{.NetworkSettings.Networks.weftnet.IPAddress}}', 'c2'])
    ).trim();
    const held = async (h: Host) =>
      (await h.report<{ ipam: { owned: { addresses: string[] }[] } }>()).ipam.owned.some((o) =>
        o.addresses.some((x) => x.split('/')[0] === ip2),
      );
    expect(await held(b)).toBe(true);
    await db.mustDocker(['rm', '-f', 'c2']);
    await eventually('the address of c2 freed on host2', async () => !(await held(b)), 10_000);
    for (const h of [a, b]) {
      await eventually(
        `c2's name gone on ${h.nickname}`,
        async () => (await h.weft(['dns-lookup', 'c2.weft.local'])).stdout.trim() === '',
        10_000,
      );
    }
  }, 60_000);

  it('weft attach takes a Docker name, registers it in DNS, and reattaches the container when it restarts', async () => {
    await workload(da, 'c3', []);
    const r = await a.weft(['attach', 'c3']);
    expect(r.code, r.stderr).toBe(0);
    const ip3 = r.stdout.trim().split('/')[0];
    const ip3v6 = r.stdout.trim().split(/\s+/)[1]?.split('/')[0];
    expect(ip3v6).toMatch(/^fd77:6566:7400:/); // dual-stack (--ipv6)
    expect((await a.weft(['dns-lookup', 'c3.weft.local'])).stdout.trim().split(/\s+/).sort()).toEqual(
      [ip3, ip3v6].sort(),
    );
    // c1 is on the weft network on the same host; c3 reaches it over the bridge, and c1 finds c3 by name.
    const ip1 = (
      await da.mustDocker(['inspect', '-f', '{{.NetworkSettings.Networks.weftnet.IPAddress}}', 'c1'])
    ).trim();
    // (Retried: with another suite sharing the two cores, the first ARP exchange can take over 2 s.)
    await eventually(
      'c3 reaches c1',
      async () => (await da.docker(['exec', 'c3', 'ping', '-c', '1', '-W', '2', ip1])).code === 0,
      10_000,
    );
    // Containers attached this way resolve each other by name across hosts (weft dns-args on Docker's default network).
    await workload(db, 'c4', await dnsArgs(b));
    expect((await b.weft(['attach', 'c4'])).code).toBe(0);
    const found = await eventually(
      'c4 resolves c3 by name',
      async () => {
        const g = await db.docker(['exec', 'c4', 'getent', 'ahostsv4', 'c3']);
        return g.code === 0 ? g.stdout : null;
      },
      10_000,
    );
    expect(found.split(/\s+/)[0]).toBe(ip3);
    expect((await db.docker(['exec', 'c4', 'ping', '-c', '1', '-W', '2', ip3])).code).toBe(0);
    await db.mustDocker(['rm', '-f', 'c4']);
    await da.mustDocker(['restart', '-t', '1', 'c3']);
    const back = await eventually(
      'c3 reattached after its restart',
      async () => {
        const out = await da.docker(['exec', 'c3', 'ip', '-4', '-o', 'addr', 'show', 'dev', 'ethwe']);
        return out.code === 0 && /inet 10\./.test(out.stdout) ? out.stdout : null;
      },
      15_000,
    );
    expect(back).toMatch(/inet 10\./);
    const ps = await a.weft(['ps']);
    const id3 = await da.mustDocker(['inspect', '-f', '{{.Id}}', 'c3']);
    expect(ps.stdout).toContain(id3.slice(0, 12));
    // detached by name: stays detached.
    expect((await a.weft(['detach', 'c3'])).code).toBe(0);
    expect((await da.docker(['exec', 'c3', 'ip', 'link', 'show', 'ethwe'])).code).not.toBe(0);
  }, 60_000);

  it("the Kubernetes init step (the DaemonSet's own command, in the image) installs the plugin; it runs in a container with no Node", async () => {
    const yaml = readFileSync(join(projectRoot(), 'examples', 'kubernetes', 'weft-daemonset.yaml'), 'utf8');
    const command = JSON.parse(/- name: install-cni\n\s+image: \S+\n\s+command: (\[.*\])/.exec(yaml)![1]) as string[];
    const mounts = [...yaml.matchAll(/mountPath: (\/host\/\S+) \}/g)].map((m) => m[1]);
    expect(mounts).toEqual(['/host/etc/cni/net.d', '/host/opt/cni/bin']);
    const node = mkdtempSync(join(tmpdir(), 'weft-k8s-node-'));
    try {
      // A node's directories, its CNI bin dir with the reference portmap already there.
      for (const m of mounts) mkdirSync(join(node, m), { recursive: true });
      writeFileSync(join(node, '/host/opt/cni/bin/portmap'), '', { mode: 0o755 });
      const out = await da.mustDocker([
        'run',
        '--rm',
        ...mounts.flatMap((m) => ['-v', `${join(node, m)}:${m}`]),
        '--entrypoint',
        command[0],
        IMAGE,
        ...command.slice(1),
      ]);
      expect(out).toMatch(/installed \/host\/opt\/cni\/bin\/weft-cni \(static binary\)/);
      const list = JSON.parse(readFileSync(join(node, '/host/etc/cni/net.d/10-weft.conflist'), 'utf8')) as {
        plugins: { type: string }[];
      };
      expect(list.plugins.map((p) => p.type)).toEqual(['weft-cni', 'portmap']);
      // A busybox container: no Node, no weft; the installed plugin still answers.
      const root = join(node, 'busybox');
      mkdirSync(join(root, 'bin'), { recursive: true });
      await run('cp', ['/usr/bin/busybox', join(root, 'bin', 'busybox')]);
      symlinkSync('busybox', join(root, 'bin', 'sh'));
      await run('tar', ['-C', root, '-cf', join(node, 'busybox.tar'), '.']);
      await da.mustDocker(['import', join(node, 'busybox.tar'), 'weft-test-busybox:1']);
      const answer = await da.mustDocker([
        'run',
        '--rm',
        '-v',
        `${join(node, '/host/opt/cni/bin')}:/opt/cni/bin:ro`,
        '--entrypoint',
        '/bin/sh',
        'weft-test-busybox:1',
        '-c',
        'test -e /usr/bin/node -o -e /usr/local/bin/node && echo has-node; echo \'{"cniVersion":"1.0.0"}\' | CNI_COMMAND=VERSION /opt/cni/bin/weft-cni',
      ]);
      expect(JSON.parse(answer)).toEqual({
        cniVersion: '1.0.0',
        supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'],
      });
      await da.docker(['rmi', 'weft-test-busybox:1']);
    } finally {
      rmSync(node, { recursive: true, force: true });
    }
  }, 120_000);

  it('weft stop removes the router container; weft reset leaves no container, bridge, rules or state', async () => {
    const s = await b.weft(['stop']);
    expect(s.code, s.stderr).toBe(0);
    expect((await db.docker(['ps', '-a', '--filter', 'name=^weft$', '-q'])).stdout.trim()).toBe('');

    for (const c of ['c1', 'c3']) await da.mustDocker(['rm', '-f', c]);
    await da.mustDocker(['network', 'rm', 'weftnet']);
    const r = await a.weft(['reset']);
    expect(r.code, r.stderr).toBe(0);
    expect((await da.docker(['ps', '-a', '--filter', 'name=^weft$', '-q'])).stdout.trim()).toBe('');
    expect((await a.exec('ip', ['link', 'show', 'weft'])).code).not.toBe(0);
    expect((await a.exec('nft', ['list', 'table', 'inet', 'weft'])).code).not.toBe(0);
    const files = await run('ls', ['-A', a.dataDir]);
    expect(files.stdout.trim()).toBe('');
    // The plugin's socket went with the router.
    const sock = await da.docker([
      'run',
      '--rm',
      '-v',
      '/run/docker/plugins:/p',
      '--entrypoint',
      'sh',
      IMAGE,
      '-c',
      '[ -e /p/weft.sock ] && echo present || echo absent',
    ]);
    expect(sock.stdout.trim()).toBe('absent');
  }, 90_000);
});
