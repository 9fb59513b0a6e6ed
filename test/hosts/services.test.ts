// Services on three namespace hosts with the real kernel: a VIP balanced at the
// client's host over backends on two other hosts, on every port, each connection
// kept on one backend; a detached backend out of every client's translation
// within a second while connections to the others go on; a new backend taken
// in; a backend's host leaving the mesh; over the sleeve, a failing check taking
// a backend out and back, a VIP without backends refusing at once, security
// groups holding through the VIP.
import { expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { eventually, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { threeHostsPerTest } from '../harness/three-hosts.js';
import { run } from '../harness/exec.js';
import { spread, whoamiServer } from '../harness/whoami.js';

const hosts = threeHostsPerTest();
const stoppers = hosts.stoppers;
const threeHosts = (extra: string[] = []) => hosts.launch(extra);
type Container = Awaited<ReturnType<typeof hosts.attached>>;
const container = (h: Host, label: string, ...groups: string[]) => hosts.attached(h, label, ...groups);

async function serve(c: Container, ports: number[], id = c.label): Promise<() => void> {
  const s = await whoamiServer(c.ns, id, ports);
  stoppers.push(s.stop);
  return s.stop;
}

async function weft(h: Host, args: string[]): Promise<string> {
  const r = await h.weft(args);
  if (r.code !== 0) throw new Error(`weft ${args.join(' ')} on ${h.nickname}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The backend addresses the translation in a container's namespace holds for a VIP. */
async function translated(c: Container, vip: string): Promise<string[]> {
  const r = await run('ip', ['netns', 'exec', c.ns, 'nft', 'list', 'chain', 'ip', 'weft_services', 'vips']);
  const line = r.stdout.split('\n').find((l) => l.includes(`ip daddr ${vip} `));
  return line ? [...line.matchAll(/\d+ : (\d+\.\d+\.\d+\.\d+)/g)].map((m) => m[1]).sort() : [];
}

interface Shown {
  vip: string;
  live: { container: string; addr: string; host: string | null; health: string; flowsFromHere: number }[];
}

async function show(h: Host, name: string): Promise<Shown> {
  return JSON.parse(await weft(h, ['service', 'show', name, '--json'])) as Shown;
}

/** A connection from a container to ip:port kept open, writing every 100 ms; the backend names it got back. */
function hold(from: Container, ip: string, port: number): { answers: () => string[] } {
  const script = `const s = require('net').connect(${port}, '${ip}'); s.on('data', (d) => process.stdout.write(d));
    s.on('error', () => process.exit(0)); s.on('close', () => process.exit(0)); setInterval(() => s.write('x'), 100); setTimeout(() => process.exit(0), 60000);`;
  const child = spawn('ip', ['netns', 'exec', from.ns, process.execPath, '-e', script], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  let text = '';
  child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
  stoppers.push(() => child.kill('SIGKILL'));
  return { answers: () => text.split('\n').filter(Boolean) };
}

describeAsRoot('services', () => {
  it("a VIP spreads 300 connections on two ports over three backends on two hosts, a connection stays on its backend, DNS gives the VIP; a detached backend is out within a second and the others keep their flows; a new one gets traffic; a gone host's backend is out", async () => {
    const [h1, h2, h3] = await threeHosts();
    const b1 = await container(h1, 'b1', 'api');
    const b2 = await container(h1, 'b2', 'api');
    const b3 = await container(h2, 'b3', 'api');
    const client = await container(h3, 'client');
    for (const b of [b1, b2, b3]) await serve(b, [8080, 9090]);

    const created = (await weft(h1, ['service', 'create', 'api', '--group', 'api'])).trim();
    const vip = created.split(' ')[1];
    expect(created).toBe(`api ${vip} (api.weft.local)`);
    expect(vip).toMatch(/^10\.96\.\d+\.\d+$/);
    // The service reaches the client's host by gossip, a hop or two after the CLI returned.
    const resolved = await eventually(
      "the VIP resolves on the client's host",
      async () => (await run('ip', ['netns', 'exec', client.ns, 'getent', 'hosts', 'api.weft.local'])).stdout.trim(),
      5000,
      50,
    );
    expect(resolved.split(/\s+/)[0]).toBe(vip);

    const addrs = [b1, b2, b3].map((b) => b.ip).sort();
    await eventually(
      "the client's host translates the VIP to all three backends",
      async () => JSON.stringify(await translated(client, vip)) === JSON.stringify(addrs),
      10_000,
      100,
    );
    const s = await spread(client.ns, vip, [8080, 9090], 300);
    expect(s.failed).toBe(0);
    expect(s.mixed).toBe(0);
    for (const b of ['b1', 'b2', 'b3']) expect(s.counts[b] ?? 0).toBeGreaterThanOrEqual(60); // at least 20 percent each
    const shown = await show(h3, 'api');
    expect(shown.live.map((b) => `${b.container} ${b.host} ${b.health}`).sort()).toEqual([
      `netns:${b1.ns} host1 unchecked`,
      `netns:${b2.ns} host1 unchecked`,
      `netns:${b3.ns} host2 unchecked`,
    ]);
    for (const b of shown.live) expect(b.flowsFromHere).toBeGreaterThan(0); // this host's clients' flows, from conntrack
    const metrics = await h3.exec(process.execPath, [
      '-e',
      "fetch('http://127.0.0.1:6782/metrics').then((r) => r.text()).then((t) => console.log(t))",
    ]);
    expect(metrics.stdout).toMatch(/weft_service_backends\{service="api",health="unchecked"\} 3/);
    expect(metrics.stdout).toMatch(
      new RegExp(`weft_service_flows\\{service="api",backend="${b3.ip.replaceAll('.', '\\.')}"\\} [1-9]`),
    );
    expect((await weft(h3, ['status'])).trim()).toMatch(
      /Services: 1 in 10\.96\.0\.0\/16, translated in 1 container\(s\) here/,
    );
    const listed = await weft(h2, ['service', 'list']);
    expect(listed).toMatch(new RegExp(`api\\s+${vip.replaceAll('.', '\\.')}\\s+group api\\s+3/3`));

    // Three held connections: round robin puts them on the three backends.
    const held = [hold(client, vip, 8080), hold(client, vip, 8080), hold(client, vip, 8080)];
    await eventually('the held connections answer', async () => held.every((x) => x.answers().length > 2), 10_000, 100);
    expect(held.map((x) => x.answers()[0]).sort()).toEqual(['b1', 'b2', 'b3']);
    const healthy = held.filter((x) => x.answers()[0] !== 'b3');

    await weft(h2, ['detach', `netns:${b3.ns}`]);
    const t0 = Date.now();
    await eventually(
      "b3 out of the client's translation",
      async () => !(await translated(client, vip)).includes(b3.ip),
      5000,
      20,
    );
    expect(Date.now() - t0).toBeLessThanOrEqual(1000);
    const before = healthy.map((x) => x.answers().length);
    const after = await spread(client.ns, vip, [8080], 30);
    expect(after.failed).toBe(0);
    expect(Object.keys(after.counts).sort()).toEqual(['b1', 'b2']);
    await eventually(
      'connections to healthy backends keep going',
      async () => healthy.every((x, i) => x.answers().length > before[i] + 5),
      5000,
      100,
    );
    for (const x of healthy) expect(new Set(x.answers()).size).toBe(1);

    const b4 = await container(h2, 'b4', 'api');
    await serve(b4, [8080]);
    await eventually(
      'the new backend gets connections',
      async () => ((await spread(client.ns, vip, [8080], 6)).counts.b4 ?? 0) > 0,
      10_000,
      200,
    );

    // Host 2 leaves the mesh (its router killed): its backend takes no new connections.
    await h2.kill();
    await eventually(
      "b4 out of the client's translation once host2 is gone",
      async () => !(await translated(client, vip)).includes(b4.ip),
      15_000,
      100,
    );
    expect(Object.keys((await spread(client.ns, vip, [8080], 10)).counts).sort()).toEqual(['b1', 'b2']);
  }, 150_000); // 22 s alone; three times that with another suite on the two cores

  it('over the sleeve: a failing check takes a backend out and back; a VIP without backends refuses at once; a security group denying the client denies it through the VIP', async () => {
    const [h1, h2, h3] = await threeHosts(['--no-fastdp']);
    const b1 = await container(h1, 'b1', 'api');
    const b2 = await container(h2, 'b2', 'api');
    const client = await container(h3, 'client');
    const friend = await container(h3, 'friend', 'friends');
    await serve(b1, [8080, 7070]);
    await serve(b2, [8080]);
    const stopHealth = await serve(b2, [7070], 'b2-health');

    expect(await weft(h3, ['status', 'connections'])).toMatch(/sleeve/);
    const vip = (await weft(h3, ['service', 'create', 'chk', '--group', 'api', '--check', 'tcp:7070'])).split(' ')[1];
    await eventually(
      'both backends healthy and translated',
      async () => {
        const st = await show(h1, 'chk');
        return (
          st.live.length === 2 &&
          st.live.every((b) => b.health === 'healthy') &&
          (await translated(client, vip)).length === 2
        );
      },
      10_000,
      200,
    );

    stopHealth();
    await eventually(
      'b2 is failing on every host',
      async () => {
        for (const h of [h1, h2, h3])
          if ((await show(h, 'chk')).live.find((b) => b.addr === b2.ip)?.health !== 'failing') return false;
        return true;
      },
      10_000,
      200,
    );
    await eventually(
      'b2 is out of the translation',
      async () => JSON.stringify(await translated(client, vip)) === JSON.stringify([b1.ip]),
      5000,
      50,
    );
    const out = await spread(client.ns, vip, [8080], 20);
    expect(out.counts).toEqual({ b1: 20 }); // b2 still listens on 8080: only the check keeps it out
    await serve(b2, [7070], 'b2-health');
    await eventually(
      'b2 healthy and translated again',
      async () => {
        if ((await translated(client, vip)).length === 2) return true;
        // What each host says, for the error if this times out.
        const seen = await Promise.all(
          [h1, h2, h3].map(
            async (h) => `${h.nickname}: ${(await show(h, 'chk')).live.find((b) => b.addr === b2.ip)?.health}`,
          ),
        );
        throw new Error(
          `b2 is ${seen.join(', ')}; the client translates to ${(await translated(client, vip)).join(' ')}`,
        );
      },
      20_000,
      200,
    );
    expect((await spread(client.ns, vip, [8080], 20)).counts.b2 ?? 0).toBeGreaterThan(0);

    // No backend: refused at once, by TCP reset and ICMP, not a time-out.
    const empty = (await weft(h1, ['service', 'create', 'none', '--group', 'nobody'])).split(' ')[1];
    await eventually(
      "the empty service known to the client's host",
      async () => (await show(h3, 'none')).vip === empty,
      5000,
      100,
    );
    const refused = await spread(client.ns, empty, [80, 443], 2, 5000);
    expect(refused.errors).toEqual({ ECONNREFUSED: 2 });
    const ping = await run('ip', ['netns', 'exec', client.ns, 'ping', '-c', '1', '-W', '5', empty]);
    expect(ping.code).not.toBe(0);
    expect(ping.stdout + ping.stderr).toMatch(/unreachable|no route/i);

    // Security groups see the backend's address: a denied client stays denied through the VIP.
    await weft(h1, ['policy', 'allow', '--to', 'api', '--from', 'friends']);
    await eventually(
      'the client is denied through the VIP',
      async () => (await spread(client.ns, vip, [8080], 2, 1500)).failed === 2,
      10_000,
      200,
    );
    const allowed = await spread(friend.ns, vip, [8080], 10);
    expect(allowed.failed).toBe(0);
  }, 150_000);
});
