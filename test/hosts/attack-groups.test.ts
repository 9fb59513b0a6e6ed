// Security groups against containers that try to walk around them, on namespace
// hosts with the real kernel, on fastdp and on the sleeve. db accepts tcp and
// udp 5432 from group web only. Containers outside web, on db's host and on
// another, try IPv6 link-local, a forged IPv4 source (web's address), a forged
// source MAC, and a spoofed ARP for web's address; each fails, and the port
// guard's counters show where it was stopped. web itself gets in throughout.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster, eventually, sleep, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { must, run } from '../harness/exec.js';
import { startServer } from '../harness/traffic.js';
import { ruleCounter, sendUdp, tcpConnect, udpRecorder } from '../harness/attacker.js';

const FAST = ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'];
/** A TCP server on every address of both families, port 5432. */
const DUAL_STACK = `require('node:net').createServer((s) => { s.on('error', () => {}); s.end('db'); }).listen({ port: 5432, host: '::' }, () => process.stdout.write('ready\\n')); setTimeout(() => process.exit(0), 300000);`;

interface Box {
  ns: string;
  ip: string;
  mac: string;
  host: Host;
}

for (const overlay of ['fastdp', 'sleeve'] as const) {
  describeAsRoot(`security groups against containers that try to get around them (${overlay})`, () => {
    let cluster: Cluster;
    let h1: Host;
    let h2: Host;
    let db: Box;
    let web: Box;
    let near: Box; // on db's host, in no group
    let far: Box; // on the other host, in no group
    let received: () => { from: string; data: string }[];
    const stoppers: (() => void)[] = [];
    const guard = async (h: Host) => (await h.exec('nft', ['list', 'table', 'bridge', 'weft'])).stdout;
    /** The packets the guard dropped at a container's port for this reason. */
    const droppedAt = async (b: Box, why: string) => {
      const chain = (await guard(b.host)).split(/\n(?=\s*chain )/).find((c) => c.includes(b.mac));
      if (!chain) throw new Error(`no guard chain for ${b.mac}`);
      return ruleCounter(chain, why);
    };

    async function box(h: Host, label: string, ...groups: string[]): Promise<Box> {
      const c = await cluster.attached(h, label, ...groups);
      const mac = JSON.parse((await run('ip', ['-n', c.ns, '-json', 'link', 'show', 'ethwe'])).stdout)[0]
        .address as string;
      return { ns: c.ns, ip: c.ip, mac, host: h };
    }

    beforeAll(async () => {
      cluster = await Cluster.create(2, { routerArgs: [...FAST, ...(overlay === 'sleeve' ? ['--no-fastdp'] : [])] });
      [h1, h2] = await cluster.launchAll();
      db = await box(h1, 'db', 'db');
      near = await box(h1, 'near');
      web = await box(h2, 'web', 'web');
      far = await box(h2, 'far');
      stoppers.push((await startServer(db.ns, DUAL_STACK, [], 'db server')).stop);
      const rec = await udpRecorder(db.ns, 5432);
      stoppers.push(rec.stop);
      received = rec.received;
      for (const proto of ['tcp', 'udp']) {
        const r = await h1.weft(['policy', 'allow', '--to', 'db', '--from', 'web', '--proto', proto, '--port', '5432']);
        if (r.code !== 0) throw new Error(r.stderr);
      }
      await eventually(
        'web reaches db, and near does not',
        async () =>
          (await tcpConnect(web.ns, db.ip, 5432)) === 'open' && (await tcpConnect(near.ns, db.ip, 5432)) !== 'open',
        20_000,
        300,
      );
    }, 180_000);
    afterAll(async () => {
      for (const s of stoppers) s();
      await cluster?.cleanup();
    });

    it("a forged IPv4 source (web's address) is dropped at the sender's port, on db's host and from another", async () => {
      await sendUdp(web.ns, db.ip, 5432, Buffer.from('from web itself'));
      await eventually("web's datagram", async () => received().some((d) => d.data === 'from web itself'), 5000, 100);
      for (const o of [near, far]) {
        // It takes web's address, and knows db's MAC without asking (an ARP from web's address would be dropped too).
        await must('ip', ['-n', o.ns, 'addr', 'add', `${web.ip}/32`, 'dev', 'ethwe']);
        await must('ip', ['-n', o.ns, 'neigh', 'replace', db.ip, 'lladdr', db.mac, 'dev', 'ethwe', 'nud', 'permanent']);
        const before = await droppedAt(o, 'spoofed IPv4 source');
        await sendUdp(o.ns, db.ip, 5432, Buffer.from(`forged by ${o === near ? 'near' : 'far'}`), web.ip, 5);
        await sleep(800);
        expect(received().filter((d) => d.data.startsWith('forged'))).toEqual([]);
        expect(await droppedAt(o, 'spoofed IPv4 source')).toBeGreaterThanOrEqual(before + 5);
        await must('ip', ['-n', o.ns, 'addr', 'del', `${web.ip}/32`, 'dev', 'ethwe']);
      }
    });

    it("a forged source MAC with web's address is dropped", async () => {
      await must('ip', ['-n', near.ns, 'addr', 'add', `${web.ip}/32`, 'dev', 'ethwe']);
      await must('ip', ['-n', near.ns, 'link', 'set', 'ethwe', 'address', web.mac]);
      // A new MAC flushes the neighbour table: db's MAC again, without asking.
      await must('ip', [
        '-n',
        near.ns,
        'neigh',
        'replace',
        db.ip,
        'lladdr',
        db.mac,
        'dev',
        'ethwe',
        'nud',
        'permanent',
      ]);
      try {
        const before = await droppedAt(near, 'spoofed source MAC');
        await sendUdp(near.ns, db.ip, 5432, Buffer.from('forged MAC'), web.ip, 5);
        await sleep(800);
        expect(received().filter((d) => d.data === 'forged MAC')).toEqual([]);
        expect(await droppedAt(near, 'spoofed source MAC')).toBeGreaterThanOrEqual(before + 5);
      } finally {
        await must('ip', ['-n', near.ns, 'link', 'set', 'ethwe', 'address', near.mac]);
        await must('ip', ['-n', near.ns, 'addr', 'del', `${web.ip}/32`, 'dev', 'ethwe']);
      }
    });

    it("a spoofed ARP claiming web's address does not reach db: its neighbour entry for web keeps web's MAC", async () => {
      // db has talked to web, so it has an entry for web's address.
      await eventually(
        "db's neighbour entry for web",
        async () => (await run('ip', ['-n', db.ns, 'neigh', 'show', web.ip])).stdout.includes(web.mac),
        10_000,
        200,
      );
      const before = await droppedAt(near, 'spoofed ARP sender address');
      await must('ip', ['-n', near.ns, 'addr', 'add', `${web.ip}/32`, 'dev', 'ethwe']);
      try {
        const arp = await run('ip', [
          'netns',
          'exec',
          near.ns,
          'arping',
          '-U',
          '-c',
          '3',
          '-I',
          'ethwe',
          '-s',
          web.ip,
          web.ip,
        ]);
        expect(arp.stdout + arp.stderr).toMatch(/ARPING/);
      } finally {
        await must('ip', ['-n', near.ns, 'addr', 'del', `${web.ip}/32`, 'dev', 'ethwe']);
      }
      await sleep(500);
      const entry = (await run('ip', ['-n', db.ns, 'neigh', 'show', web.ip])).stdout;
      expect(entry).not.toContain(near.mac);
      expect(await droppedAt(near, 'spoofed ARP sender address')).toBeGreaterThanOrEqual(before + 3);
    });

    it("IPv6 link-local to db:5432 fails from db's host and from another, even with IPv6 turned back on in the containers", async () => {
      // Containers get no IPv6 on ethwe; a container's root can turn it on again (and db may be one that has it).
      for (const b of [db, near, far]) {
        await must('ip', [
          'netns',
          'exec',
          b.ns,
          'sysctl',
          '-qw',
          'net.ipv6.conf.ethwe.accept_dad=0',
          'net.ipv6.conf.ethwe.disable_ipv6=0',
        ]);
      }
      const ll = await eventually("db's link-local address", async () => {
        const a = JSON.parse(
          (await run('ip', ['-n', db.ns, '-6', '-json', 'addr', 'show', 'dev', 'ethwe'])).stdout,
        ) as { addr_info: { local: string }[] }[];
        return a[0]?.addr_info.find((x) => x.local.startsWith('fe80'))?.local;
      });
      // IPv6 works inside db itself.
      expect(await tcpConnect(db.ns, `${ll}%ethwe`, 5432)).toBe('open');
      for (const o of [near, far]) {
        const before = await droppedAt(o, 'no IPv6 address');
        expect(await tcpConnect(o.ns, `${ll}%ethwe`, 5432, 2000)).toMatch(/^closed/);
        expect(await droppedAt(o, 'no IPv6 address')).toBeGreaterThan(before);
      }
      // And web still gets in over IPv4.
      expect(await tcpConnect(web.ns, db.ip, 5432)).toBe('open');
    });
  });
}
