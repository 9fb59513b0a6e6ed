import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsServer, parseUpstream } from '../../../dns/server.js';
import { NameTable, compareRecords, nameEntryFromWire, type NameRecord } from '../../../dns/table.js';
import { parseIp6 } from '../../../net/addr6.js';
import { freePorts } from '../../harness/ports.js';
import { eventually, sleep } from '../../harness/cluster.js';

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';

function table(): NameTable {
  const t = new NameTable();
  const many = Array.from({ length: 60 }, (_, i) => ({
    hostname: 'many.weft.local.',
    container: `m${i}`,
    ip: `10.32.1.${i + 1}`,
  }));
  t.merge([
    {
      peer: A,
      version: 1,
      entries: [
        { hostname: 'web.weft.local.', container: 'c1', ip: '10.32.0.1' },
        { hostname: 'web.weft.local.', container: 'c2', ip: '10.32.0.2' },
        ...many,
      ],
    },
    { peer: B, version: 1, entries: [{ hostname: 'db.weft.local.', container: 'c3', ip: '10.40.0.1' }] },
  ]);
  return t;
}

/** What the tests read of a decoded reply (dns-packet's own types omit rcode and union the answers). */
interface Reply {
  rcode: string;
  flag_tc: boolean;
  answers: { data: string; ttl: number }[];
}
const decode = (b: Buffer): Reply => dnsPacket.decode(b) as unknown as Reply;

const query = (name: string, type = 'A', opt?: number) =>
  dnsPacket.encode({
    type: 'query',
    id: 7,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name } as dnsPacket.Question],
    additionals: opt ? [{ type: 'OPT', name: '.', udpPayloadSize: opt } as unknown as dnsPacket.Answer] : [],
  });

describe('name table CRDT', () => {
  const arbRec: fc.Arbitrary<NameRecord> = fc.record({
    peer: fc.constantFrom(A, B),
    version: fc.integer({ min: 0, max: 3 }),
    entries: fc.array(
      fc.record({
        hostname: fc.constantFrom('a.weft.local.', 'b.weft.local.'),
        container: fc.constantFrom('x', 'y'),
        ip: fc.constantFrom('10.32.0.1', '10.32.0.2'),
      }),
      { maxLength: 3 },
    ),
  });
  const state = (...parts: NameRecord[][]) => {
    const t = new NameTable();
    for (const p of parts) t.merge(p);
    return [...t.records.values()]
      .sort((x, y) => (x.peer < y.peer ? -1 : 1))
      .map((r) => [r.peer, r.version, JSON.stringify(r.entries.map((e) => [e.hostname, e.container, e.ip]).sort())]);
  };
  it('merge is commutative, associative, idempotent', () => {
    fc.assert(
      fc.property(
        fc.array(arbRec, { maxLength: 4 }),
        fc.array(arbRec, { maxLength: 4 }),
        fc.array(arbRec, { maxLength: 4 }),
        (a, b, c) => {
          expect(state(a, b)).toEqual(state(b, a));
          expect(state(a, b, c)).toEqual(state(a, [...b, ...c]));
          expect(state(a, b, a, b)).toEqual(state(a, b));
        },
      ),
      { numRuns: 300 },
    );
    expect(compareRecords({ peer: A, version: 2, entries: [] }, { peer: A, version: 1, entries: [] })).toBeGreaterThan(
      0,
    );
  });
});

describe('DNS server', () => {
  const server = new DnsServer(table(), {
    host: '127.0.0.1',
    port: 0,
    domain: 'weft.local',
    ttl: 1,
    upstreams: [],
    upstreamTimeoutMs: 300,
  });
  const ask = async (name: string, type = 'A', opt?: number) =>
    decode((await server.handle(query(name, type, opt), 'udp'))!);

  it('the byte-level fast path answers exactly what the full path does', async () => {
    const q = query('Web.weft.local');
    const fast = server.fastAnswer(q)!;
    expect(fast).not.toBeNull();
    const d = dnsPacket.decode(fast) as unknown as Reply & {
      id: number;
      flag_aa: boolean;
      flag_rd: boolean;
      questions: { name: string }[];
    };
    expect(d.id).toBe(7);
    expect(d.rcode).toBe('NOERROR');
    expect(d.flag_aa && d.flag_rd).toBe(true);
    expect(d.answers.map((a) => a.data).sort()).toEqual(['10.32.0.1', '10.32.0.2']);
    expect(d.answers.every((a) => a.ttl === 1)).toBe(true);
    // Not for it: EDNS, other types, unknown names, other domains, truncated bytes.
    expect(server.fastAnswer(query('web.weft.local', 'A', 4096))).toBeNull();
    expect(server.fastAnswer(query('web.weft.local', 'AAAA'))).toBeNull();
    expect(server.fastAnswer(query('nobody.weft.local'))).toBeNull();
    expect(server.fastAnswer(query('example.org'))).toBeNull();
    expect(server.fastAnswer(q.subarray(0, q.length - 1))).toBeNull();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (b) => {
        server.fastAnswer(Buffer.from(b));
      }),
      { numRuns: 2000 },
    );
  });

  it('answers A for a name, every address, shuffled, TTL 1, case-insensitively', async () => {
    const r = await ask('WEB.Weft.Local');
    expect(r.rcode).toBe('NOERROR');
    expect(r.answers.map((a) => a.data).sort()).toEqual(['10.32.0.1', '10.32.0.2']);
    expect(r.answers.every((a) => a.ttl === 1)).toBe(true);
    const orders = new Set<string>();
    for (let i = 0; i < 40; i++) orders.add((await ask('web.weft.local')).answers.map((a) => a.data).join());
    expect(orders.size).toBe(2);
  });

  it('NXDOMAIN for unknown names in the domain; NOERROR empty for other types of a known name', async () => {
    expect((await ask('nobody.weft.local')).rcode).toBe('NXDOMAIN');
    const aaaa = await ask('db.weft.local', 'AAAA');
    expect(aaaa.rcode).toBe('NOERROR');
    expect(aaaa.answers).toEqual([]);
  });

  it('answers reverse lookups', async () => {
    const r = await ask('1.0.40.10.in-addr.arpa', 'PTR');
    expect(r.answers[0].data).toBe('db.weft.local');
  });

  it('truncates over UDP at 512 bytes or the EDNS size, and answers in full over TCP', async () => {
    const small = await ask('many.weft.local');
    expect(small.flag_tc).toBe(true);
    expect(small.answers.length).toBeLessThan(60);
    const edns = await ask('many.weft.local', 'A', 4096);
    expect(edns.flag_tc).toBe(false);
    expect(edns.answers).toHaveLength(60);
    const tcp = decode((await server.handle(query('many.weft.local'), 'tcp'))!);
    expect(tcp.answers).toHaveLength(60);
  });

  it('SERVFAIL when no upstream answers; FORMERR for garbage; never throws', async () => {
    expect((await ask('example.org')).rcode).toBe('SERVFAIL');
    const fe = await server.handle(Buffer.from('\x00\x07garbage-garbage'), 'udp');
    // A response (QR set), well-formed or not, is never answered: a server made to talk to itself (its
    // own address forged as the source) would loop.
    const response = Buffer.from(fe!);
    expect(response[2] & 0x80).toBe(0x80);
    expect(await server.handle(response, 'udp')).toBeNull();
    expect(fe![3] & 0x0f).toBe(1);
    expect(await server.handle(Buffer.from([1, 2, 3]), 'udp')).toBeNull();
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (b) => {
        await server.handle(Buffer.from(b), 'udp');
      }),
      { numRuns: 500 },
    );
  });
});

for (const batched of [true, false])
  describe(`DNS server on sockets (${batched ? 'batched UDP through the addon' : "Node's dgram"}), with an upstream`, () => {
    let upstream: dgram.Socket;
    let server: DnsServer;
    let port = 0;
    beforeAll(async () => {
      upstream = dgram.createSocket('udp4');
      upstream.on('message', (m, r) => {
        const q = dnsPacket.decode(m);
        upstream.send(
          dnsPacket.encode({
            type: 'response',
            id: q.id,
            questions: q.questions,
            answers: [{ type: 'A', name: q.questions![0].name, data: '198.18.9.9' }],
          }),
          r.port,
          r.address,
        );
      });
      await new Promise<void>((r) => upstream.bind(0, '127.0.0.1', () => r()));
      port = await freePorts(1);
      server = new DnsServer(table(), {
        host: '127.0.0.1',
        port,
        domain: 'weft.local',
        ttl: 1,
        upstreams: [`127.0.0.1:${upstream.address().port}`],
        upstreamTimeoutMs: 500,
        batchedUdp: batched,
      });
      await server.start();
      expect(server.udpIo).toBe(batched ? 'batched' : 'dgram');
    });
    afterAll(() => {
      server.close();
      upstream.close();
    });

    it('forwards other names to the upstream, over UDP', async () => {
      const c = dgram.createSocket('udp4');
      const reply = await new Promise<Buffer>((resolve) => {
        c.on('message', (m) => resolve(m));
        c.send(query('example.org'), port, '127.0.0.1');
      });
      c.close();
      expect(decode(reply).answers[0].data).toBe('198.18.9.9');
    });

    it('answers local names over UDP, many queries at once, each to its sender', async () => {
      const c = dgram.createSocket('udp4');
      const ids = new Set<number>();
      await new Promise<void>((resolve) => {
        c.on('message', (m) => {
          const d = dnsPacket.decode(m) as unknown as { id: number; answers: { data: string }[] };
          if (d.answers[0]?.data === '10.40.0.1') ids.add(d.id);
          if (ids.size === 200) resolve();
        });
        for (let i = 0; i < 200; i++) {
          const q = query('db.weft.local');
          q.writeUInt16BE(i, 0);
          c.send(q, port, '127.0.0.1');
        }
      });
      c.close();
      expect(ids.size).toBe(200);
    });

    it('serves TCP with length-prefixed messages', async () => {
      expect(decode(await askTcp(port, query('db.weft.local'))).answers[0].data).toBe('10.40.0.1');
    });
  });

describe('the DNS forwarder under attack', () => {
  /** An upstream that records what it is asked, from where, and answers only when told to. */
  async function quietUpstream(host = '127.0.0.1'): Promise<{
    sock: dgram.Socket;
    asked: { id: number; port: number; name: string }[];
    port: number;
  }> {
    const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    const asked: { id: number; port: number; name: string }[] = [];
    sock.on('message', (m, r) => {
      const q = dnsPacket.decode(m);
      asked.push({ id: q.id!, port: r.port, name: q.questions![0].name });
    });
    await new Promise<void>((r) => sock.bind(0, host, () => r()));
    return { sock, asked, port: sock.address().port };
  }
  const ask = (port: number, name: string, id: number) =>
    new Promise<Buffer | null>((resolve) => {
      const c = dgram.createSocket('udp4');
      const q = query(name);
      q.writeUInt16BE(id, 0);
      const t = setTimeout(() => (c.close(), resolve(null)), 3000);
      c.on('message', (m) => (clearTimeout(t), c.close(), resolve(m)));
      c.send(q, port, '127.0.0.1');
    });

  // The upstream over IPv4, and over IPv6 (its own upstream socket, matched the same way).
  it.each([
    { family: 'IPv4', upHost: '127.0.0.1', upstream: (p: number) => `127.0.0.1:${p}` },
    { family: 'IPv6', upHost: '::1', upstream: (p: number) => `[::1]:${p}` },
  ])(
    'one upstream socket with ids of its own; a reply counts only from the server asked, with its id and question ($family upstream)',
    async ({ upHost, upstream }) => {
      const up = await quietUpstream(upHost);
      const port = await freePorts(1);
      const server = new DnsServer(table(), {
        host: '127.0.0.1',
        port,
        domain: 'weft.local',
        ttl: 1,
        upstreams: [upstream(up.port)],
        upstreamTimeoutMs: 2000,
        batchedUdp: false,
      });
      await server.start();
      const forger = dgram.createSocket(upHost.includes(':') ? 'udp6' : 'udp4');
      try {
        const answers = Promise.all([
          ask(port, 'a.example.org', 1),
          ask(port, 'b.example.org', 1),
          ask(port, 'c.example.org', 2),
        ]);
        await eventually('the upstream asked thrice', async () => up.asked.length === 3, 2000, 20);
        // Ids are the forwarder's own (two clients used id 1), from one socket.
        expect(new Set(up.asked.map((a) => a.id)).size).toBe(3);
        expect(new Set(up.asked.map((a) => a.port)).size).toBe(1);
        const a = up.asked.find((x) => x.name === 'a.example.org')!;
        const answer = (name: string, id: number, data: string) =>
          dnsPacket.encode({
            type: 'response',
            id,
            questions: [{ type: 'A', name }],
            answers: [{ type: 'A', name, data }],
          });
        // Forged: from another socket (another port), and from the right one with another question.
        forger.send(answer('a.example.org', a.id, '6.6.6.6'), a.port, upHost);
        up.sock.send(answer('z.example.org', a.id, '6.6.6.7'), a.port, upHost);
        await sleep(200);
        for (const x of up.asked) up.sock.send(answer(x.name, x.id, '198.18.9.1'), x.port, upHost);
        const got = await answers;
        for (const [i, id] of [1, 1, 2].entries()) {
          expect(got[i]).not.toBeNull();
          const d = decode(got[i]!) as unknown as { id: number; answers: { data: string }[] };
          expect(d.id).toBe(id); // the client's own id back
          expect(d.answers[0].data).toBe('198.18.9.1');
        }
        expect(server.stats.strayReplies).toBe(2);
      } finally {
        forger.close();
        server.close();
        up.sock.close();
      }
    },
  );

  it('queries in flight are capped: past the cap a client gets SERVFAIL at once; clients not allowed get nothing', async () => {
    const up = await quietUpstream(); // never answers
    const port = await freePorts(1);
    const server = new DnsServer(table(), {
      host: '127.0.0.1',
      port,
      domain: 'weft.local',
      ttl: 1,
      upstreams: [`127.0.0.1:${up.port}`],
      upstreamTimeoutMs: 5000,
      batchedUdp: false,
      maxInFlight: 5,
    });
    await server.start();
    try {
      const t0 = Date.now();
      const got = await Promise.all(Array.from({ length: 12 }, (_, i) => ask(port, `n${i}.example.org`, i)));
      // 7 answered at once with SERVFAIL; the 5 in flight wait (and time out here).
      const servfail = got.filter((m) => m && (decode(m) as unknown as { rcode: string }).rcode === 'SERVFAIL');
      expect(servfail.length).toBe(7);
      expect(Date.now() - t0).toBeLessThan(4000);
      expect(up.asked.length).toBe(5);
      expect(server.stats.overloaded).toBe(7);
    } finally {
      server.close();
      up.sock.close();
    }
    const closed = new DnsServer(table(), {
      host: '127.0.0.1',
      port: port + 1,
      domain: 'weft.local',
      ttl: 1,
      upstreams: [],
      upstreamTimeoutMs: 500,
      batchedUdp: false,
      clients: () => false,
    });
    await closed.start();
    try {
      expect(await ask(port + 1, 'db.weft.local', 3)).toBeNull();
      expect(closed.stats.refusedClients).toBe(1);
    } finally {
      closed.close();
    }
  });
});

describe('names with IPv6 addresses', () => {
  const dual = () => {
    const t = new NameTable();
    t.merge([
      {
        peer: A,
        version: 1,
        entries: [
          { hostname: 'both.weft.local.', container: 'c1', ip: '10.32.0.1' },
          { hostname: 'both.weft.local.', container: 'c1', ip: 'fd77:6566:7400::1' },
          { hostname: 'six.weft.local.', container: 'c2', ip: 'fd77:6566:7400::2' },
        ],
      },
    ]);
    return t;
  };
  const server = new DnsServer(dual(), {
    host: '127.0.0.1',
    port: 0,
    domain: 'weft.local',
    ttl: 1,
    upstreams: [],
    upstreamTimeoutMs: 300,
  });
  const ask = async (name: string, type = 'A') => decode((await server.handle(query(name, type), 'udp'))!);

  it("A answers a name's IPv4 addresses, AAAA its IPv6 ones; a name without that family has no answer, not NXDOMAIN", async () => {
    expect((await ask('both.weft.local')).answers.map((a) => a.data)).toEqual(['10.32.0.1']);
    expect((await ask('both.weft.local', 'AAAA')).answers.map((a) => a.data)).toEqual(['fd77:6566:7400::1']);
    const noA = await ask('six.weft.local');
    expect([noA.rcode, noA.answers.length]).toEqual(['NOERROR', 0]);
    expect((await ask('six.weft.local', 'AAAA')).answers.map((a) => a.data)).toEqual(['fd77:6566:7400::2']);
    expect((await ask('nobody.weft.local', 'AAAA')).rcode).toBe('NXDOMAIN');
    // The byte-level fast path answers A only, and never an IPv6 address.
    expect(server.fastAnswer(query('six.weft.local'))).toBeNull();
    const fast = decode(server.fastAnswer(query('both.weft.local'))!);
    expect(fast.answers.map((a) => a.data)).toEqual(['10.32.0.1']);
  });

  it('answers PTR for ip6.arpa names of addresses in the table', async () => {
    const nibbles = (ip: string) => [...parseIp6(ip).toString(16).padStart(32, '0')].reverse().join('.') + '.ip6.arpa';
    const r = await ask(nibbles('fd77:6566:7400::2'), 'PTR');
    expect(r.answers.map((a) => a.data)).toEqual(['six.weft.local']);
  });

  it('the wire form takes IPv6 addresses in their one form only', () => {
    expect(nameEntryFromWire(['x.weft.local.', 'c', 'fd77::1'])).toEqual({
      hostname: 'x.weft.local.',
      container: 'c',
      ip: 'fd77::1',
    });
    for (const bad of ['FD77::1', 'fd77:0::1', 'fd77::1%eth0', 'fd77::g'])
      expect(() => nameEntryFromWire(['x.weft.local.', 'c', bad]), bad).toThrow();
  });
});

describe('IPv6 upstreams', () => {
  it('reads them as resolv.conf writes them, in one form', () => {
    expect(parseUpstream('FD00:198:18:0:0:0:0:2')).toEqual({ host: 'fd00:198:18::2', port: 53 });
    expect(parseUpstream('[fd00:198:18::2]:5353')).toEqual({ host: 'fd00:198:18::2', port: 5353 });
    expect(parseUpstream('198.18.0.2')).toEqual({ host: '198.18.0.2', port: 53 });
    expect(() => parseUpstream('fd00::1%eth0')).toThrow(); // a zone: not taken
    expect(() => parseUpstream('[1:2]:53')).toThrow(/not an IPv6 address/); // bracketed, but no address
    expect(parseUpstream('::1:53')).toEqual({ host: '::1:53', port: 53 }); // bare: all of it is the address
  });

  it('forwards to an upstream on ::1 (written [0:0::1]:port), over UDP and TCP', async () => {
    const answer = (m: Buffer) => {
      const q = dnsPacket.decode(m);
      return dnsPacket.encode({
        type: 'response',
        id: q.id,
        questions: q.questions,
        answers: [{ type: 'A', name: q.questions![0].name, data: '198.18.6.6' }],
      });
    };
    const udp = dgram.createSocket('udp6');
    udp.on('message', (m, r) => udp.send(answer(m), r.port, r.address));
    await new Promise<void>((r) => udp.bind(0, '::1', () => r()));
    const upPort = udp.address().port;
    // TCP on the same port, length-prefixed.
    const tcp = net.createServer((s) => {
      s.once('data', (d) => {
        const a = answer(d.subarray(2));
        const len = Buffer.alloc(2);
        len.writeUInt16BE(a.length);
        s.end(Buffer.concat([len, a]));
      });
    });
    await new Promise<void>((r) => tcp.listen(upPort, '::1', () => r()));
    const port = await freePorts(1);
    const server = new DnsServer(table(), {
      host: '127.0.0.1',
      port,
      domain: 'weft.local',
      ttl: 1,
      upstreams: [`[0:0::1]:${upPort}`],
      upstreamTimeoutMs: 1000,
      batchedUdp: false,
    });
    await server.start();
    try {
      const c = dgram.createSocket('udp4');
      const reply = await new Promise<Buffer>((resolve) => {
        c.on('message', (m) => resolve(m));
        c.send(query('six.example.org'), port, '127.0.0.1');
      });
      c.close();
      expect(decode(reply).answers[0].data).toBe('198.18.6.6');
      expect(decode(await askTcp(port, query('tcp.example.org'))).answers[0].data).toBe('198.18.6.6');
    } finally {
      server.close();
      udp.close();
      tcp.close();
    }
  });
});

/** One query over TCP (length-prefixed), its answer. */
function askTcp(port: number, q: Buffer): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => {
      const len = Buffer.alloc(2);
      len.writeUInt16BE(q.length);
      s.write(Buffer.concat([len, q]));
    });
    let buf = Buffer.alloc(0);
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        s.end();
        resolve(buf.subarray(2));
      }
    });
    s.on('error', reject);
  });
}
