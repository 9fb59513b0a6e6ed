// Dual-stack containers (router --ipv6): each attach gives an address of each
// family; containers on three hosts talk over IPv6 on the kernel VXLAN path and
// on the sleeve; the bridge answers Neighbour Solicitations for remote
// containers itself; security groups judge IPv6 exactly as IPv4; services have
// an IPv6 VIP, translated in the clients; and a
// container cannot speak IPv6 as another (forged sources, Neighbour
// Advertisements, router advertisements are dropped at its port).
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster, FAST_THREE_HOSTS, eventually, steady } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { run } from '../harness/exec.js';
import { sendUdp, tcpConnect, udpRecorder } from '../harness/attacker.js';
import { echo, echoServer, startServer } from '../harness/traffic.js';
import { spawn } from 'node:child_process';

let cluster: Cluster;

interface Dual {
  ns: string;
  ip: string;
  ip6: string;
}

/** A TCP listener on every address of both families, on these ports. */
const LISTEN = `
const net = require('node:net');
const ports = process.argv.slice(1).map(Number);
let n = 0;
for (const p of ports) net.createServer((s) => { s.on('error', () => {}); s.end('hi'); }).listen(p, '::', () => ++n === ports.length && process.stdout.write('ready\\n'));
setTimeout(() => process.exit(0), 120000);`;

async function attach(h: Cluster['hosts'][number], label: string, ...args: string[]): Promise<Dual> {
  const ns = await cluster.container(label);
  const r = await h.weft(['attach', ...args, `netns:${ns}`]);
  if (r.code !== 0) throw new Error(`attach ${label}: ${r.stderr}`);
  const addrs = r.stdout.trim().split(/\s+/);
  const ip6 = addrs.find((a) => a.includes(':'))?.split('/')[0] ?? '';
  return { ns, ip: addrs[0].split('/')[0], ip6 };
}

const ping6 = (from: string, to: string) =>
  run('ip', ['netns', 'exec', from, 'ping', '-6', '-c', '2', '-i', '0.2', '-W', '2', to], { timeoutMs: 10_000 });

describeAsRoot('dual-stack containers (--ipv6)', () => {
  beforeAll(async () => {
    cluster = await Cluster.create(3, {
      routerArgs: [...FAST_THREE_HOSTS, '--ipv6'],
    });
    // Host 3 runs the sleeve only: its traffic with the others goes through userspace.
    cluster.hosts[2].routerArgs.push('--no-fastdp');
    await cluster.launchAll();
  }, 120_000);
  afterAll(async () => {
    await cluster?.cleanup();
  });

  it('an attach gives an address of each family; ping6 and TCP over IPv6 cross hosts on fastdp and the sleeve', async () => {
    const [h1, h2, h3] = cluster.hosts;
    const a = await attach(h1, 'a');
    const b = await attach(h2, 'b');
    const c = await attach(h3, 'c');
    const only4 = await attach(h1, 'only4', '--ipv4-only');
    for (const x of [a, b, c]) expect(x.ip6).toMatch(/^fd77:6566:7400:/);
    expect(only4.ip6).toBe('');
    // The container's interface: its IPv6 address (not tentative) and the link-local one from its MAC.
    const shown = await run('ip', ['-n', a.ns, '-6', 'addr', 'show', 'dev', 'ethwe']);
    expect(shown.stdout).toContain(`inet6 ${a.ip6}/48`);
    expect(shown.stdout).toMatch(/inet6 fe80::/);
    expect(shown.stdout).not.toMatch(/tentative/);
    expect((await run('ip', ['-n', only4.ns, '-6', 'addr', 'show', 'dev', 'ethwe'])).stdout).toBe('');

    // fastdp (h1 - h2) and the sleeve (h3 - the others), both ways.
    await eventually('ping6 a -> b', async () => (await ping6(a.ns, b.ip6)).code === 0, 15_000);
    expect((await ping6(b.ns, a.ip6)).code).toBe(0);
    await eventually('ping6 a -> c over the sleeve', async () => (await ping6(a.ns, c.ip6)).code === 0, 15_000);
    expect((await ping6(c.ns, b.ip6)).code).toBe(0);
    const srv = await startServer(b.ns, LISTEN, ['8080'], 'listener');
    try {
      expect(await tcpConnect(a.ns, b.ip6, 8080)).toBe('open');
      expect(await tcpConnect(c.ns, b.ip6, 8080)).toBe('open');
      expect(await tcpConnect(a.ns, b.ip, 8080)).toBe('open'); // and IPv4 as before
    } finally {
      srv.stop();
    }
    // The bridge has a neighbour entry for each remote container's IPv6 address (Neighbour
    // Solicitations for them are answered on the host, not flooded), and no address of its own.
    const neigh = await h1.exec('ip', ['-6', 'neigh', 'show', 'dev', 'weft', 'nud', 'permanent']);
    expect(neigh.stdout).toContain(b.ip6);
    expect(neigh.stdout).toContain(c.ip6);
    // The bridge's one IPv6 address is the DNS server's (no link-local address).
    const bridge6 = (await h1.exec('ip', ['-6', '-o', 'addr', 'show', 'dev', 'weft'])).stdout.trim().split('\n');
    expect(bridge6.map((l) => l.split(/\s+/)[3])).toEqual(['fd77:6566:7453::53/128']);
    // Status shows both families.
    expect((await h1.weft(['ps'])).stdout).toContain(a.ip6);
    expect((await h1.weft(['status'])).stdout).toMatch(/Datapath: .*dual-stack/);
    // A name registered at attach has an address of each family, and a dual-stack container's resolver
    // asks for both (glibc asks AAAA only when the container has IPv6 of its own).
    const named = await attach(h2, 'named', '-h', 'named.weft.local');
    await eventually(
      'getent ahosts gives both families',
      async () => {
        const r = await run('ip', ['netns', 'exec', a.ns, 'getent', 'ahosts', 'named.weft.local']);
        return r.stdout.includes(named.ip) && r.stdout.includes(named.ip6);
      },
      10_000,
    );
  }, 90_000);

  it('security groups judge IPv6 as IPv4, and revoking cuts an IPv6 connection', async () => {
    const [h1, h2] = cluster.hosts;
    const db = await attach(h2, 'db', '--group', 'v6db');
    const web = await attach(h1, 'web', '--group', 'v6web');
    const other = await attach(h1, 'other');
    const allow = await h1.weft([
      'policy',
      'allow',
      '--to',
      'v6db',
      '--from',
      'v6web',
      '--proto',
      'tcp',
      '--port',
      '5432',
    ]);
    expect(allow.code, allow.stderr).toBe(0);
    const servers = [await echoServer(db.ns, 5432), await echoServer(db.ns, 6000)];
    let held: ReturnType<typeof spawn> | null = null;
    try {
      await eventually(
        'the rule enforced on host 2',
        async () => (await tcpConnect(other.ns, db.ip6, 5432, 800)) !== 'open',
        20_000,
      );
      // The same answers over both families.
      for (const dst of [db.ip, db.ip6]) {
        expect(await tcpConnect(web.ns, dst, 5432)).toBe('open');
        expect(await tcpConnect(web.ns, dst, 6000, 800)).not.toBe('open');
        expect(await tcpConnect(other.ns, dst, 5432, 800)).not.toBe('open');
      }
      // Link-local addresses are bound to the same rules: no way around them over fe80::.
      const ll = async (ns: string) => {
        const out = await run('ip', ['-n', ns, '-6', '-json', 'addr', 'show', 'dev', 'ethwe', 'scope', 'link']);
        // ip lists the addresses its filter left out as empty objects
        const found = (JSON.parse(out.stdout) as { addr_info: { local?: string }[] }[])[0].addr_info.find(
          (a) => a.local,
        );
        return found!.local!;
      };
      const dbLL = `${await ll(db.ns)}%ethwe`;
      expect(await tcpConnect(web.ns, dbLL, 5432)).toBe('open');
      expect(await tcpConnect(other.ns, dbLL, 5432, 800)).not.toBe('open');
      expect(await tcpConnect(web.ns, dbLL, 6000, 800)).not.toBe('open');
      // Multicast reaches no container limited on ingress (no rule can name it): db hears nothing sent
      // to all nodes, a container without ingress rules does.
      const heardByDb = await udpRecorder(db.ns, 5353);
      const heardByWeb = await udpRecorder(web.ns, 5353);
      try {
        await sendUdp(other.ns, 'ff02::1%ethwe', 5353, Buffer.from('to all'));
        await eventually('web hears the multicast', async () => heardByWeb.received().length > 0, 5000);
        expect(heardByDb.received()).toEqual([]);
      } finally {
        heardByDb.stop();
        heardByWeb.stop();
      }
      // ICMPv6 is judged too: the rule allows tcp only.
      expect((await ping6(web.ns, db.ip6)).code).not.toBe(0);
      // policy check speaks IPv6, by address or by container.
      const chk = await h1.weft(['policy', 'check', web.ip6, db.ip6, 'tcp/5432']);
      expect(chk.code, chk.stdout + chk.stderr).toBe(0);
      const chk2 = await h1.weft(['policy', 'check', '--ipv6', `netns:${other.ns}`, `netns:${db.ns}`, 'tcp/5432']);
      expect(chk2.code).toBe(1);
      expect(chk2.stdout).toContain(db.ip6);
      // A CIDR of IPv6 as the peer.
      const cidr = await h1.weft([
        'policy',
        'allow',
        '--to',
        'v6db',
        '--from',
        `${other.ip6}/128`,
        '--proto',
        'tcp',
        '--port',
        '6000',
      ]);
      expect(cidr.code, cidr.stderr).toBe(0);
      await eventually('the CIDR rule', async () => (await tcpConnect(other.ns, db.ip6, 6000, 800)) === 'open', 20_000);
      expect(await tcpConnect(other.ns, db.ip, 6000, 800)).not.toBe('open'); // an IPv6 CIDR opens no IPv4

      // An IPv6 connection held open is cut when the rule that let it in goes.
      const script = `const s = require('net').connect(6000, '${db.ip6}');
        s.on('data', () => process.stdout.write('.')); s.on('error', () => process.exit(0));
        setInterval(() => s.write('x'), 100); setTimeout(() => process.exit(0), 60000);`;
      held = spawn('ip', ['netns', 'exec', other.ns, process.execPath, '-e', script], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      let echoes = 0;
      held.stdout!.on('data', (d: Buffer) => (echoes += d.length));
      await eventually('the held connection echoes', async () => echoes > 3, 5000, 50);
      const id = cidr.stdout.split(' ')[0];
      expect((await h1.weft(['policy', 'remove', id])).code).toBe(0);
      // Once db's host has the removal (gossip takes its time on a loaded machine), the connection is
      // cut there: nothing comes back for a second, and then still nothing.
      await eventually(
        "the removal on db's host",
        async () => !(await h2.weft(['policy', 'list'])).stdout.includes(id),
        10_000,
      );
      await steady('the held connection is cut', () => echoes);
      const before = echoes;
      await new Promise((r) => setTimeout(r, 1000));
      expect(echoes).toBe(before); // and it stays cut
    } finally {
      held?.kill('SIGKILL');
      for (const x of servers) x.stop();
    }
  }, 90_000);

  it('a service has an IPv6 VIP too: AAAA for its name, translated in dual-stack clients to the backends over IPv6', async () => {
    const [h1, h2, h3] = cluster.hosts;
    const back1 = await attach(h2, 'back1', '--group', 'svc6');
    const back2 = await attach(h3, 'back2', '--group', 'svc6');
    const client = await attach(h1, 'client');
    const servers = [await echoServer(back1.ns, 7070), await echoServer(back2.ns, 7070)];
    try {
      const made = await h1.weft(['service', 'create', 'echo6', '--group', 'svc6']);
      expect(made.code, made.stderr).toBe(0);
      const [, vip, vip6] = made.stdout.trim().split(/\s+/);
      expect(vip6).toMatch(/^fd77:6566:7401::/);
      await eventually(
        'the name resolves to both VIPs in the client',
        async () => {
          const r = await run('ip', ['netns', 'exec', client.ns, 'getent', 'ahosts', 'echo6.weft.local']);
          return r.stdout.includes(vip) && r.stdout.includes(vip6);
        },
        15_000,
      );
      // Both backends answer over the IPv6 VIP (round robin), as over the IPv4 one.
      await eventually(
        'the IPv6 VIP answers',
        async () => (await echo(client.ns, vip6, 7070).catch(() => 0)) > 0,
        15_000,
      );
      expect(await echo(client.ns, vip, 7070)).toBe(5);
      const list = await h1.weft(['service', 'show', 'echo6']);
      expect(list.stdout).toContain(`VIP ${vip} and ${vip6}`);
      expect(list.stdout).toContain(back1.ip6);
      // An address of the IPv6 service range that no service has is refused at once.
      expect(await tcpConnect(client.ns, vip6.replace(/::[0-9a-f]+$/, '::ffff'), 7070)).toBe('closed ECONNREFUSED');
      // The translation went to the backends' IPv6 addresses.
      const ct = await run('ip', ['netns', 'exec', client.ns, 'conntrack', '-L', '-f', 'ipv6']);
      expect(ct.stdout).toMatch(new RegExp(`dst=${vip6}.*src=(${back1.ip6}|${back2.ip6})`));
      // The client's MAC changed (root in a container can): a re-attach binds the new one, makes the
      // link-local address from it again, and keeps the route to the IPv6 service range.
      expect((await run('ip', ['-n', client.ns, 'link', 'set', 'ethwe', 'address', '02:00:00:00:6e:01'])).code).toBe(0);
      const again = await h1.weft(['attach', `netns:${client.ns}`]);
      expect(again.code, again.stderr).toBe(0);
      expect((await run('ip', ['-n', client.ns, '-6', 'addr', 'show', 'dev', 'ethwe'])).stdout).toContain(
        'fe80::ff:fe00:6e01',
      );
      expect((await run('ip', ['-n', client.ns, '-6', 'route', 'show', 'fd77:6566:7401::/112'])).stdout).toContain(
        'dev ethwe',
      );
      await eventually(
        'the IPv6 VIP answers after the re-attach',
        async () => (await echo(client.ns, vip6, 7070).catch(() => 0)) > 0,
        15_000,
      );
    } finally {
      for (const x of servers) x.stop();
    }
  }, 60_000);

  it("the DNS server answers over IPv6 too (a dual-stack container's second nameserver); nothing else of the host answers there", async () => {
    const [h1, h2] = cluster.hosts;
    const asker = await attach(h1, 'asker6');
    const named = await attach(h2, 'named6', '-h', 'named6.weft.local');
    const dns6 = 'fd77:6566:7453::53';
    // The container's resolv.conf names both addresses of the server.
    const conf = (await run('cat', [`/etc/netns/${asker.ns}/resolv.conf`])).stdout;
    expect(conf).toContain('nameserver 169.254.83.83');
    expect(conf).toContain(`nameserver ${dns6}`);
    // Asked over IPv6 only (UDP, then TCP): A and AAAA for a name on another host.
    const ask = (tcp: boolean) =>
      run('ip', [
        'netns',
        'exec',
        asker.ns,
        process.execPath,
        '-e',
        `const { Resolver } = require('node:dns').promises; const r = new Resolver(${tcp ? '{ tries: 1 }' : ''});
         r.setServers(['[${dns6}]:53']);
         Promise.all([r.resolve4('named6.weft.local'), r.resolve6('named6.weft.local')])
           .then(([a, aaaa]) => console.log(a.join(','), aaaa.join(','))).catch((e) => { console.error(e.code); process.exit(1); });`,
      ]);
    await eventually('an answer over IPv6', async () => {
      const r = await ask(false);
      return r.stdout.trim() === `${named.ip} ${named.ip6}`;
    });
    // TCP to the server's port is answered; any other port of that address is not (the router's included).
    expect(await tcpConnect(asker.ns, dns6, 53)).toBe('open');
    for (const port of [6783, 6784, 6782, 22])
      expect(await tcpConnect(asker.ns, dns6, port, 1000)).toBe('closed timeout');
  });

  it('a container cannot speak IPv6 as another: forged sources, advertisements and router advertisements are dropped', async () => {
    const [h1] = cluster.hosts;
    const victim = await attach(h1, 'victim');
    const mallory = await attach(h1, 'mallory');
    const witness = await attach(h1, 'witness');
    await eventually('witness reaches victim', async () => (await ping6(witness.ns, victim.ip6)).code === 0, 15_000);
    const before = await h1.exec('nft', ['list', 'table', 'bridge', 'weft']);
    const count = (l: string, what: string) =>
      l
        .split('\n')
        .filter((x) => x.includes(`comment "${what}"`))
        .reduce((n, x) => n + Number(/counter packets (\d+)/.exec(x)?.[1] ?? 0), 0);
    // Mallory sends with the victim's address as its source (added with no DAD, as root in a container can).
    const forge = `
import socket, struct, sys
src, dst, kind, mac = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def csum(data):
    if len(data) % 2: data += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
mac = bytes.fromhex(mac.replace(':', ''))
if kind == 'na':   # unsolicited advertisement: "the victim's address is at my MAC"
    body = struct.pack('!BBHI', 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, src) + bytes([2, 1]) + mac
    to = 'ff02::1'
else:              # a router advertisement with a default route
    body = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 1800, 0, 0)
    to = 'ff02::1'
s.sendto(body, (to + '%ethwe', 0))
`;
    const macOf = async (ns: string) =>
      JSON.parse((await run('ip', ['-n', ns, '-j', 'link', 'show', 'dev', 'ethwe'])).stdout)[0].address as string;
    const malloryMac = await macOf(mallory.ns);
    const na = await run('ip', ['netns', 'exec', mallory.ns, 'python3', '-c', forge, victim.ip6, '', 'na', malloryMac]);
    expect(na.code, na.stderr).toBe(0);
    const ra = await run('ip', ['netns', 'exec', mallory.ns, 'python3', '-c', forge, victim.ip6, '', 'ra', malloryMac]);
    expect(ra.code, ra.stderr).toBe(0);
    // A forged source: Mallory takes the victim's address and pings the witness from it.
    expect(
      (await run('ip', ['-n', mallory.ns, 'addr', 'add', `${victim.ip6}/128`, 'dev', 'ethwe', 'nodad'])).code,
    ).toBe(0);
    await run(
      'ip',
      ['netns', 'exec', mallory.ns, 'ping', '-6', '-c', '2', '-i', '0.2', '-W', '1', '-I', victim.ip6, witness.ip6],
      {
        timeoutMs: 10_000,
      },
    );
    const after = await h1.exec('nft', ['list', 'table', 'bridge', 'weft']);
    expect(count(after.stdout, "neighbour advertisement for another's address")).toBeGreaterThan(
      count(before.stdout, "neighbour advertisement for another's address"),
    );
    expect(count(after.stdout, 'router advertisement, redirect or multicast query from a container')).toBeGreaterThan(
      count(before.stdout, 'router advertisement, redirect or multicast query from a container'),
    );
    expect(count(after.stdout, 'spoofed IPv6 source')).toBeGreaterThan(count(before.stdout, 'spoofed IPv6 source'));
    // IPv6 to the host's bridge (which a host that forwards IPv6 would route on) goes nowhere.
    const brMac = (await h1.exec('cat', ['/sys/class/net/weft/address'])).stdout.trim();
    for (const cmd of [
      ['-6', 'neigh', 'replace', 'fe80::1', 'lladdr', brMac, 'dev', 'ethwe', 'nud', 'permanent'],
      ['-6', 'route', 'replace', '2001:db8::/64', 'via', 'fe80::1', 'dev', 'ethwe'],
    ])
      expect((await run('ip', ['-n', mallory.ns, ...cmd])).code).toBe(0);
    await run('ip', ['netns', 'exec', mallory.ns, 'ping', '-6', '-c', '2', '-i', '0.2', '-W', '1', '2001:db8::1'], {
      timeoutMs: 10_000,
    });
    const later = await h1.exec('nft', ['list', 'table', 'bridge', 'weft']);
    expect(count(later.stdout, 'IPv6 to the host')).toBeGreaterThan(count(before.stdout, 'IPv6 to the host'));
    // The witness still reaches the real victim, and took no default route from the advertisement.
    expect((await ping6(witness.ns, victim.ip6)).code).toBe(0);
    const nb = await run('ip', ['-n', witness.ns, '-6', 'neigh', 'show', victim.ip6]);
    expect(nb.stdout).not.toContain(malloryMac);
    expect((await run('ip', ['-n', witness.ns, '-6', 'route', 'show', 'default'])).stdout).toBe('');
  }, 60_000);

  it('an IPv6-only container (--ipv6-only): no IPv4 at all, IPv6 across hosts, names and DNS over IPv6, a service of IPv6-only backends', async () => {
    const [h1, h2, h3] = cluster.hosts;
    const only6 = await attach(h1, 'only6', '--ipv6-only', '--group', 'v6only', '-h', 'only6.weft.local');
    expect(only6.ip6).toMatch(/^fd77:6566:7400:/);
    expect(only6.ip).toBe(only6.ip6); // the one address printed is the IPv6 one
    const far = await attach(h2, 'far6');
    const sleeved = await attach(h3, 'sleeved6');
    const inNs = (ns: string, ...args: string[]) => run('ip', ['-n', ns, ...args]);
    expect((await inNs(only6.ns, '-4', 'addr', 'show', 'dev', 'ethwe')).stdout).toBe('');
    expect((await inNs(only6.ns, '-4', 'route', 'show')).stdout).not.toContain('169.254.83.83');
    // Its resolver asks the DNS server over IPv6 only.
    const conf = (await run('cat', [`/etc/netns/${only6.ns}/resolv.conf`])).stdout;
    expect(conf).toContain('nameserver fd77:6566:7453::53');
    expect(conf).not.toContain('169.254.83.83');
    await eventually('ping6 to fastdp', async () => (await ping6(only6.ns, far.ip6)).code === 0, 15_000);
    await eventually('ping6 to the sleeve', async () => (await ping6(only6.ns, sleeved.ip6)).code === 0, 15_000);
    expect((await ping6(sleeved.ns, only6.ip6)).code).toBe(0);
    // Names: its own has no A; it resolves others over IPv6 with plain getent.
    await eventually(
      'its name has its IPv6 address only',
      async () => {
        const r = await run('ip', ['netns', 'exec', far.ns, 'getent', 'ahosts', 'only6.weft.local']);
        return r.stdout.includes(only6.ip6);
      },
      10_000,
    );
    expect((await run('ip', ['netns', 'exec', far.ns, 'getent', 'ahostsv4', 'only6.weft.local'])).stdout).toBe('');
    const named = await attach(h2, 'named-for6', '-h', 'named-for6.weft.local');
    await eventually(
      'getent from the IPv6-only container',
      async () =>
        (await run('ip', ['netns', 'exec', only6.ns, 'getent', 'ahostsv6', 'named-for6.weft.local'])).stdout.includes(
          named.ip6,
        ),
      10_000,
    );
    // IPv4 it sends anyway (root in a container can give itself an address) is dropped at its port.
    const dropped = async () =>
      (await h1.exec('nft', ['list', 'table', 'bridge', 'weft'])).stdout
        .split('\n')
        .filter((x) => x.includes('comment "no IPv4 address"') || x.includes('comment "no address to speak ARP for"'))
        .reduce((n, x) => n + Number(/counter packets (\d+)/.exec(x)?.[1] ?? 0), 0);
    const before = await dropped();
    expect((await inNs(only6.ns, 'addr', 'add', `${far.ip.replace(/\.\d+$/, '.250')}/12`, 'dev', 'ethwe')).code).toBe(
      0,
    );
    expect(
      (
        await run('ip', ['netns', 'exec', only6.ns, 'ping', '-c', '2', '-i', '0.2', '-W', '1', far.ip], {
          timeoutMs: 10_000,
        })
      ).code,
    ).not.toBe(0);
    expect(await dropped()).toBeGreaterThan(before);
    await inNs(only6.ns, '-4', 'addr', 'flush', 'dev', 'ethwe');
    // An IPv4 address with --ipv6-only is refused; attached again without the option, it stays IPv6
    // only; a dual-stack container cannot be made IPv6-only by a re-attach.
    const mixed = await h1.weft(['attach', '--ipv6-only', '10.40.0.9/12', `netns:${only6.ns}`]);
    expect(mixed.stderr).toMatch(/IPv6 only, and an IPv4 address/);
    const both = await h1.weft(['attach', '--ipv6-only', '--ipv4-only', `netns:${only6.ns}`]);
    expect(both.stderr).toMatch(/choose one/);
    const again = await h1.weft(['attach', `netns:${only6.ns}`]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout.trim()).toBe(`${only6.ip6}/48`);
    const dual = await h2.weft(['attach', '--ipv6-only', `netns:${named.ns}`]);
    expect(dual.stderr).toMatch(/attached with IPv4 addresses already; detach it first/);

    // A service whose one backend is IPv6 only: its name has no A (nothing would answer there), the
    // IPv6 VIP reaches it from a dual-stack client.
    const server = await echoServer(only6.ns, 7090);
    try {
      const made = await h2.weft(['service', 'create', 'v6svc', '--group', 'v6only']);
      expect(made.code, made.stderr).toBe(0);
      const [, vip, vip6] = made.stdout.trim().split(/\s+/);
      await eventually('the IPv6 VIP answers', async () => (await echo(far.ns, vip6, 7090).catch(() => 0)) > 0, 15_000);
      const aaaa = await run('ip', ['netns', 'exec', far.ns, 'getent', 'ahosts', 'v6svc.weft.local']);
      expect(aaaa.stdout).toContain(vip6);
      expect(aaaa.stdout).not.toContain(vip);
      expect(await tcpConnect(far.ns, vip, 7090)).toBe('closed ECONNREFUSED');
      const shown = await h2.weft(['service', 'show', 'v6svc']);
      expect(shown.stdout).toMatch(new RegExp(`netns:\\S+\\s+${only6.ip6}\\s`));
    } finally {
      server.stop();
      await h2.weft(['service', 'remove', 'v6svc']);
    }
  }, 90_000);

  it("a service's health check runs on each family: a backend that listens on IPv4 only leaves the IPv6 VIP, not the IPv4 one", async () => {
    const [h1, h2] = cluster.hosts;
    const back = await attach(h2, 'v4listener', '--group', 'half');
    const client = await attach(h1, 'halfclient');
    const server = await startServer(
      back.ns,
      `require('node:net').createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(7091, '0.0.0.0', () => process.stdout.write('ready\\n'));
       setTimeout(() => process.exit(0), 60000);`,
      [],
      'IPv4-only echo server',
    );
    try {
      const made = await h1.weft(['service', 'create', 'half', '--group', 'half', '--check', 'tcp:7091']);
      expect(made.code, made.stderr).toBe(0);
      const [, vip, vip6] = made.stdout.trim().split(/\s+/);
      await eventually(
        'the IPv6 check fails, the IPv4 one passes',
        async () => {
          const s = JSON.parse((await h1.weft(['service', 'show', 'half', '--json'])).stdout) as {
            live: { health: string; health6?: string }[];
          };
          return s.live.length === 1 && s.live[0].health === 'healthy' && s.live[0].health6 === 'failing';
        },
        20_000,
      );
      expect((await h1.weft(['service', 'show', 'half'])).stdout).toContain('healthy (IPv6 failing)');
      expect((await h1.weft(['service', 'list'])).stdout).toMatch(/half .* 1\/1 \(IPv6 0\/1\)/);
      const metrics = await h1.exec(process.execPath, [
        '-e',
        "fetch('http://127.0.0.1:6782/metrics').then((r) => r.text()).then((t) => console.log(t))",
      ]);
      expect(metrics.stdout).toMatch(/weft_service_backends\{service="half",health="healthy"\} 1/);
      expect(metrics.stdout).toMatch(/weft_service_backends_ipv6\{service="half",health="failing"\} 1/);
      // Its name has no AAAA while nothing passes the check over IPv6 (a client preferring IPv6 would be refused).
      const names = await run('ip', ['netns', 'exec', client.ns, 'getent', 'ahosts', 'half.weft.local']);
      expect(names.stdout).toContain(vip);
      expect(names.stdout).not.toContain(vip6);
      expect(await echo(client.ns, vip, 7091)).toBe(5);
      // No backend over IPv6: refused at once in the client, not sent to a port that drops it.
      await eventually(
        'the IPv6 VIP refuses',
        async () => (await tcpConnect(client.ns, vip6, 7091)) === 'closed ECONNREFUSED',
        10_000,
      );
    } finally {
      server.stop();
      await h1.weft(['service', 'remove', 'half']);
    }
  }, 60_000);

  it('a router restarted without --ipv6 binds no port to IPv6 again: the containers it attached dual-stack lose IPv6, not the rules', async () => {
    const h3 = cluster.hosts[2];
    const before = await attach(h3, 'was6');
    expect(before.ip6).not.toBe('');
    await h3.kill();
    h3.routerArgs = h3.routerArgs.filter((a) => a !== '--ipv6');
    await h3.launch(cluster.hosts.slice(0, 2).map((h) => h.ip));
    await eventually(
      'the port drops IPv6',
      async () => {
        const t = (await h3.exec('nft', ['list', 'table', 'bridge', 'weft'])).stdout;
        return t.includes('no IPv6 address') && !t.includes(before.ip6);
      },
      20_000,
    );
    expect((await h3.weft(['ps'])).stdout).not.toContain(before.ip6);
    // Asked for IPv6 now, it says why not.
    const six = await h3.weft(['attach', 'fd77:6566:7400::77/48', `netns:${before.ns}`]);
    expect(six.stderr).toMatch(/only when the router runs with --ipv6/);
  }, 90_000);
});
