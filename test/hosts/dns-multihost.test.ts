// Names across namespace hosts, resolved from inside containers with getent.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';

let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

/** One DNS query from a namespace to weft's DNS address: the decoded reply, or null when none came within `waitMs`. */
async function askDns(
  ns: string,
  type: string,
  name: string,
  waitMs: number,
): Promise<{ rcode: string; answers: { type: string; data: string }[] } | null> {
  const r = await run(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      '-e',
      `
      const p = require('dns-packet'); const s = require('node:dgram').createSocket('udp4');
      s.on('message', (m) => { const d = p.decode(m); console.log(JSON.stringify({ rcode: d.rcode, answers: d.answers.map((x) => ({ type: x.type, data: x.data })) })); process.exit(0); });
      s.send(p.encode({ type: 'query', id: 9, flags: p.RECURSION_DESIRED, questions: [{ type: '${type}', name: '${name}' }] }), 53, '169.254.83.83');
      setTimeout(() => { console.log('null'); process.exit(0); }, ${waitMs});`,
    ],
    { timeoutMs: waitMs + 7000 },
  );
  return JSON.parse(r.stdout.trim() || 'null') as { rcode: string; answers: { type: string; data: string }[] } | null;
}

const getent = (ns: string, name: string) =>
  run('ip', ['netns', 'exec', ns, 'getent', 'hosts', name], { timeoutMs: 10_000 });

describeAsRoot('DNS across namespace hosts', () => {
  it('a container on one host resolves a container on another by name; removal propagates', async () => {
    cluster = await Cluster.create(2, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
    });
    const [a, b] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    await eventually('connected', async () =>
      (await a.report<Report>()).connections.some((c) => c.state === 'established'),
    );
    const c1 = await cluster.container('web');
    const c2 = await cluster.container('db');
    expect((await a.weft(['attach', '-h', 'web.weft.local', `netns:${c1}`])).code).toBe(0);
    const ip2 = (await b.weft(['attach', '--hostname', 'db.weft.local', `netns:${c2}`])).stdout.trim().split('/')[0];
    const r = await eventually('db resolves from web', async () => {
      const g = await getent(c1, 'db.weft.local');
      return g.code === 0 ? g.stdout : null;
    });
    expect(r).toMatch(new RegExp(`^${ip2.replaceAll('.', '\\.')}\\s+db\\.weft\\.local`));
    // The search domain, and mixed case.
    expect((await getent(c1, 'DB')).stdout).toContain(ip2);
    expect((await getent(c1, 'nobody.weft.local')).code).not.toBe(0);
    expect((await a.weft(['dns-lookup', 'db.weft.local'])).stdout.trim()).toBe(ip2);
    expect((await a.weft(['status', 'dns'])).stdout).toMatch(/^db\s+\S+\s+netns:/m);
    // dns-add on A for an address on B, seen from B's container.
    expect((await a.weft(['dns-add', '10.32.99.99', 'extern', '-h', 'ext.weft.local'])).code).toBe(0);
    await eventually('ext resolves from db', async () =>
      (await getent(c2, 'ext.weft.local')).stdout.includes('10.32.99.99'),
    );
    // An IPv6 address for a name (dns-add on A), answered as AAAA on B, and A stays IPv4 only.
    expect(
      (await a.weft(['dns-add', 'fd77:6566:7400:0::99', '10.32.99.98', 'dual', '-h', 'dual.weft.local'])).code,
    ).toBe(0);
    const dig = async (type: string) => {
      const r = await askDns(c2, type, 'dual.weft.local', 3000);
      return r ? `${r.rcode} ${r.answers.map((x) => `${x.type}=${x.data}`).join(' ')}` : 'no answer';
    };
    await eventually('AAAA from B', async () => (await dig('AAAA')) === 'NOERROR AAAA=fd77:6566:7400::99');
    expect(await dig('A')).toBe('NOERROR A=10.32.99.98');
    await b.weft(['detach', `netns:${c2}`]);
    await eventually('db gone everywhere', async () => (await getent(c1, 'db.weft.local')).code !== 0);
    // dns-args: what `docker run` needs to use weft's DNS.
    expect((await a.weft(['dns-args'])).stdout.trim()).toBe('--dns=169.254.83.83 --dns-search=weft.local');
  });

  it('names survive their router being killed with -9 and restarted (found by the chaos suite)', async () => {
    cluster = await Cluster.create(2, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
    });
    const [a, b] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    const c2 = await cluster.container('db');
    expect((await b.weft(['attach', '-h', 'db.weft.local', `netns:${c2}`])).code).toBe(0);
    await eventually('db known on A', async () => (await a.weft(['dns-lookup', 'db.weft.local'])).stdout.trim() !== '');
    await b.kill();
    await b.launch([a.ip]);
    await eventually('B connected again', async () =>
      (await a.report<Report>()).connections.some((c) => c.state === 'established'),
    );
    // Long enough for the restarted router's record to supersede its old one everywhere.
    await new Promise((r) => setTimeout(r, 4000));
    expect((await a.weft(['dns-lookup', 'db.weft.local'])).stdout.trim()).not.toBe('');
    expect((await b.weft(['status', 'dns'])).stdout).toMatch(/^db\s/m);
  });

  it('the names of a host that is killed, and so leaves the mesh, are gone everywhere after the grace period', async () => {
    cluster = await Cluster.create(2, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
    });
    const [a, b] = cluster.hosts;
    await a.launch();
    await b.launch([a.ip]);
    const c1 = await cluster.container('web');
    const c2 = await cluster.container('db');
    expect((await a.weft(['attach', '-h', 'web.weft.local', `netns:${c1}`])).code).toBe(0);
    expect((await b.weft(['attach', '-h', 'db.weft.local', `netns:${c2}`])).code).toBe(0);
    await eventually('db resolves from web', async () => (await getent(c1, 'db.weft.local')).code === 0);
    await b.kill();
    // Still answered during the grace period (a router restart must not blank the names)...
    await new Promise((r) => setTimeout(r, 5000));
    expect((await getent(c1, 'db.weft.local')).code).toBe(0);
    // ...and gone once B has been out of the mesh for 30 s.
    await eventually(
      'db gone after B left',
      async () => (await a.weft(['dns-lookup', 'db.weft.local'])).stdout.trim() === '',
      60_000,
      1000,
    );
    expect((await getent(c1, 'db.weft.local')).code).not.toBe(0);
    expect((await getent(c1, 'web.weft.local')).code).toBe(0);
  }, 90_000);
});

describeAsRoot('DNS and a peer removed for good', () => {
  it('weft rmpeer of a killed host: its names stop resolving everywhere within a second, its endpoints go too', async () => {
    cluster = await Cluster.create(3, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=3'],
    });
    const [a, b, c] = await cluster.launchAll();
    const gone = (await c.report<Report>()).name;
    const c3 = await cluster.container('db');
    expect((await c.weft(['attach', '-h', 'db.weft.local', `netns:${c3}`])).code).toBe(0);
    const clients = new Map<string, string>();
    for (const h of [a, b]) {
      const ns = await cluster.container(`client${h.index}`);
      expect((await h.weft(['attach', `netns:${ns}`])).code).toBe(0);
      clients.set(h.ns, ns);
      await eventually(`db resolves on ${h.nickname}`, async () => (await getent(ns, 'db.weft.local')).code === 0);
    }
    await c.kill();
    for (const h of [a, b])
      await eventually(
        `${h.nickname} to see host3 gone`,
        async () => !(await h.report<Report>()).peers.some((p) => p.name === gone),
        20_000,
        200,
      );
    // Still answered: the grace period keeps names of a router that may only be restarting.
    expect((await a.weft(['dns-lookup', 'db.weft.local'])).stdout.trim()).not.toBe('');
    // Each host's own API, asked every 20 ms from a process already running there: when the name went.
    const watchers = [a, b].map((h) => {
      const child = spawn(
        'ip',
        [
          'netns',
          'exec',
          h.ns,
          process.execPath,
          '-e',
          `
        const http = require('node:http'); process.stdout.write('ready\\n');
        const ask = () => http.get({ host: '127.0.0.1', port: 6784, path: '/name/db.weft.local' }, (res) => {
          res.resume(); if (res.statusCode === 404) { process.stdout.write('gone ' + Date.now() + '\\n'); process.exit(0); } else setTimeout(ask, 20);
        }).on('error', () => setTimeout(ask, 20));
        ask(); setTimeout(() => process.exit(1), 20000);`,
        ],
        { stdio: ['ignore', 'pipe', 'ignore'] },
      );
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      return {
        ready: () => out.includes('ready'),
        goneAt: () => Number(/gone (\d+)/.exec(out)?.[1] ?? NaN),
        done: new Promise((r) => child.on('exit', r)),
      };
    });
    await eventually('the watchers asking', async () => watchers.every((w) => w.ready()), 10_000, 20);
    const r = await a.weft(['rmpeer', 'host3']);
    const removedAt = Date.now(); // rmpeer answered
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/addresses taken over from .*; removed its endpoints, DNS names/);
    await Promise.all(watchers.map((w) => w.done));
    for (const w of watchers) expect(w.goneAt() - removedAt).toBeLessThan(1000);
    for (const h of [a, b]) expect((await getent(clients.get(h.ns)!, 'db.weft.local')).code).not.toBe(0);
    expect((await b.report<Report>()).datapath!.endpoints.some((e) => e.peer === gone)).toBe(false);
  });

  it('the DNS server answers containers and loopback, not a machine on the underlay (no open resolver)', async () => {
    cluster = await Cluster.create(1, { routerArgs: ['--ipalloc-init', 'consensus=1'] });
    const [a] = cluster.hosts;
    await a.launch();
    const c1 = await cluster.container('c1');
    expect((await a.weft(['attach', '-h', 'c1.weft.local', `netns:${c1}`])).code).toBe(0);
    const stranger = await cluster.stranger(1);
    await run('ip', ['-n', stranger.ns, 'route', 'add', '169.254.83.83/32', 'via', a.ip]);
    const ask = async (ns: string) => {
      const r = await askDns(ns, 'A', 'c1.weft.local', 2000);
      return r ? r.answers.map((x) => x.data).join(' ') || 'empty' : 'no answer';
    };
    expect(await ask(c1)).toMatch(/^10\./);
    expect(await ask(a.ns)).toMatch(/^10\./);
    expect(await ask(stranger.ns)).toBe('no answer');
    expect((await a.report<{ dns: { stats: { refusedClients: number } } }>()).dns.stats.refusedClients).toBeGreaterThan(
      0,
    );
  });
});

/** A tiny upstream in a namespace, on `addr` port 53 (UDP, either family): every A question gets `answer`. */
async function tinyUpstream(ns: string, addr: string, answer: string) {
  const upstream = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      '-e',
      `
      const p = require('dns-packet'); const s = require('node:dgram').createSocket('${addr.includes(':') ? 'udp6' : 'udp4'}');
      s.on('message', (m, r) => { const q = p.decode(m);
        s.send(p.encode({ type: 'response', id: q.id, flags: p.RECURSION_AVAILABLE, questions: q.questions, answers: [{ type: 'A', name: q.questions[0].name, ttl: 5, data: '${answer}' }] }), r.port, r.address); });
      s.bind(53, '${addr}', () => console.log('ready'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'], cwd: process.cwd() },
  );
  await new Promise<void>((resolve) => upstream.stdout.on('data', () => resolve()));
  return upstream;
}

/** Launches the router with this nameserver in its resolv.conf, attaches a container, and looks up `name` there. */
async function launchAndAsk(a: Host, nameserver: string, name: string) {
  const conf = join(cluster!.workDir, 'resolv.conf');
  writeFileSync(conf, `nameserver ${nameserver}\n`);
  await a.launch([], ['--resolv-conf', conf]);
  const c1 = await cluster!.container('c1');
  expect((await a.weft(['attach', `netns:${c1}`])).code).toBe(0);
  const got = await eventually('forwarded answer', async () => {
    const g = await getent(c1, name);
    return g.code === 0 ? g.stdout : null;
  });
  return { c1, got };
}

describeAsRoot('DNS upstream', () => {
  it('forwards to an IPv6 upstream, written in resolv.conf in any spelling', async () => {
    cluster = await Cluster.create(2, { routerArgs: ['--ipalloc-init', 'consensus=1'] });
    const [a, up] = cluster.hosts;
    // IPv6 on the underlay of these two hosts only (fd00:198:18::/64).
    for (const [h, n] of [
      [a, 1],
      [up, 2],
    ] as const)
      expect((await run('ip', ['-n', h.ns, 'addr', 'add', `fd00:198:18::${n}/64`, 'dev', 'eth0', 'nodad'])).code).toBe(
        0,
      );
    const upstream = await tinyUpstream(up.ns, 'fd00:198:18::2', '198.18.6.6');
    try {
      const { got } = await launchAndAsk(a, 'FD00:198:18:0:0:0:0:2', 'six.example.test');
      expect(got).toMatch(/^198\.18\.6\.6\s+six\.example\.test/);
    } finally {
      upstream.kill('SIGKILL');
    }
  });

  it('forwards other names to the upstream from resolv.conf (another namespace), SERVFAIL when it is down', async () => {
    cluster = await Cluster.create(2, { routerArgs: ['--ipalloc-init', 'consensus=1'] });
    const [a, up] = cluster.hosts;
    // On host2's underlay address.
    const upstream = await tinyUpstream(up.ns, up.ip, '198.18.7.7');
    try {
      const { c1, got } = await launchAndAsk(a, up.ip, 'service.example.test');
      expect(got).toMatch(/^198\.18\.7\.7\s+service\.example\.test/);
      upstream.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 300));
      const dig = await askDns(c1, 'A', 'other.example.test', 8000);
      expect(dig?.rcode ?? 'no answer').toBe('SERVFAIL');
    } finally {
      upstream.kill('SIGKILL');
    }
  });
});
