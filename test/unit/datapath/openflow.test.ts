// The OVS datapath's protocols without a switch: the OpenFlow 1.3 codec against
// messages captured between Debian's ovs-ofctl and ovs-vswitchd
// (test/fixtures/openflow-captures.json), flows weft builds round-tripping,
// arbitrary bytes never escaping as anything but OpenFlowError, the controller
// connection closing on a misbehaving switch, and the OVSDB stream reader.
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { CookieKind, desiredFlows, floodDestinations, kindOf } from '../../../datapath/ovs/flows.js';
import { OpenFlowConnection } from '../../../datapath/ovs/ofconn.js';
import { OpenFlowError, decodeMessage, encodeMessage, flowText, type Message } from '../../../datapath/ovs/openflow.js';
import { JsonSplitter, OvsdbClient } from '../../../datapath/ovs/ovsdb.js';
import { formatIp6 } from '../../../net/addr6.js';

const captures = (
  JSON.parse(readFileSync(new URL('../../fixtures/openflow-captures.json', import.meta.url), 'utf8')) as {
    messages: { what: string; direction: string; hex: string }[];
  }
).messages;

let dirs: string[] = [];
let servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers) s.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  servers = [];
  dirs = [];
});

describe('OpenFlow 1.3 codec', () => {
  it('decodes what ovs-ofctl and ovs-vswitchd sent, as they meant it, and encodes it back to the same bytes', () => {
    const texts: string[] = [];
    for (const c of captures) {
      const bytes = Buffer.from(c.hex, 'hex');
      const m = decodeMessage(bytes);
      expect(encodeMessage(m).toString('hex'), c.what).toBe(c.hex);
      if (m.type === 'flow_mod') texts.push(`${m.command} ${m.flow.cookie.toString(16)} ${flowText(m.flow)}`);
      if (m.type === 'flow_stats_reply')
        texts.push(...m.flows.map((f) => `stats ${f.cookie.toString(16)} ${flowText(f)}`));
    }
    expect(texts).toEqual([
      '0 100000000000001 priority=100,eth_dst=02:00:00:00:00:01,in_port=1 actions=set_field:198.18.0.2->tun_dst,set_field:0x7765->tunnel_id,output:2',
      '0 0 priority=200,eth_src=02:00:00:00:00:09,eth_type=0x88b5,in_port=2,tunnel_id=0x7765 actions=drop',
      '0 300000000000000 priority=50,eth_dst=01:00:00:00:00:00/01:00:00:00:00:00,in_port=1 actions=set_field:198.18.0.2->tun_dst,set_field:0x7765->tunnel_id,output:2,set_field:198.18.0.3->tun_dst,output:2',
      '0 0 priority=10,in_port=2,tun_src=198.18.0.2,tunnel_id=0x7765 actions=output:1',
      'stats 0 priority=200,eth_src=02:00:00:00:00:09,eth_type=0x88b5,in_port=2,tunnel_id=0x7765 actions=drop',
      'stats 100000000000001 priority=100,eth_dst=02:00:00:00:00:01,in_port=1 actions=set_field:198.18.0.2->tun_dst,set_field:0x7765->tunnel_id,output:2',
      'stats 300000000000000 priority=50,eth_dst=01:00:00:00:00:00/01:00:00:00:00:00,in_port=1 actions=set_field:198.18.0.2->tun_dst,set_field:0x7765->tunnel_id,output:2,set_field:198.18.0.3->tun_dst,output:2',
      'stats 0 priority=10,in_port=2,tun_src=198.18.0.2,tunnel_id=0x7765 actions=output:1',
      '4 0 priority=100,eth_dst=02:00:00:00:00:01,in_port=1 actions=drop',
      '3 300000000000000 priority=32768 actions=drop',
      'stats 0 priority=200,eth_src=02:00:00:00:00:09,eth_type=0x88b5,in_port=2,tunnel_id=0x7765 actions=drop',
      'stats 0 priority=10,in_port=2,tun_src=198.18.0.2,tunnel_id=0x7765 actions=output:1',
    ]);
  });

  it('the flows weft builds survive encoding and decoding, and say what they are for', () => {
    const mac = fc
      .array(fc.integer({ min: 0, max: 255 }), { minLength: 6, maxLength: 6 })
      .map((b) => b.map((x) => x.toString(16).padStart(2, '0')).join(':'));
    // Underlay addresses of both families (an IPv6 underlay: tun_ipv6_src and tun_ipv6_dst).
    const ip = fc.oneof(
      fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }).map((b) => b.join('.')),
      fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }).map((a) => formatIp6(a)),
    );
    fc.assert(
      fc.property(
        fc.record({
          vni: fc.integer({ min: 1, max: 0xffffff }),
          local: fc.array(fc.record({ id: fc.string(), mac }), { maxLength: 5 }),
          remote: fc.array(fc.record({ id: fc.string(), mac, dst: ip }), { maxLength: 5 }),
          floods: fc.array(ip, { maxLength: 4 }),
          heartbeats: fc.array(fc.record({ peer: fc.string(), mac }), { maxLength: 3 }),
          tunnelSources: fc.array(ip, { maxLength: 4 }),
        }),
        (inputs) => {
          const flows = desiredFlows(inputs);
          for (const f of flows) {
            const m: Message = {
              type: 'flow_mod',
              xid: 7,
              command: 0,
              cookieMask: 0n,
              outPort: 0xffffffff,
              flags: 0,
              flow: f,
            };
            const back = decodeMessage(encodeMessage(m));
            expect(back).toEqual(m);
          }
          expect(flows.filter((f) => kindOf(f.cookie) === CookieKind.Remote)).toHaveLength(inputs.remote.length);
          expect(floodDestinations(flows).sort()).toEqual([...new Set(inputs.floods)].sort());
          // VXLAN is admitted to delivery from the given sources only; nothing from the tunnel is delivered in table 0.
          const admits = flows.filter((f) => kindOf(f.cookie) === CookieKind.Admit);
          const source = (f: (typeof flows)[number]) =>
            f.match.find((m) => m.field === (m.value.includes(':') ? 'tun_ipv6_src' : 'tun_src'))!.value;
          expect(admits.map(source).sort()).toEqual([...new Set(inputs.tunnelSources)].sort());
          for (const f of flows.filter(
            (f) => f.tableId === 0 && f.match.some((m) => m.field === 'in_port' && m.value === '2'),
          )) {
            expect(f.actions.every((a) => a.type === 'goto_table')).toBe(true);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it("a flood to peers of both underlay families clears the other family's tunnel destination before each copy", () => {
    const base = { vni: 0x7765, local: [], remote: [], heartbeats: [], tunnelSources: [] };
    const flood = (floods: string[]) =>
      desiredFlows({ ...base, floods }).find((f) => kindOf(f.cookie) === CookieKind.Flood)!;
    expect(flowText(flood(['198.18.0.2', 'fd00:198:18::3']))).toBe(
      'priority=50,in_port=1 actions=' +
        [
          'set_field:::->tun_ipv6_dst,set_field:198.18.0.2->tun_dst,set_field:0x7765->tunnel_id,output:2',
          'set_field:0.0.0.0->tun_dst,set_field:fd00:198:18::3->tun_ipv6_dst,set_field:0x7765->tunnel_id,output:2',
        ].join(','),
    );
    // One family: nothing to clear (the flows of an IPv4 mesh are as before).
    expect(flowText(flood(['198.18.0.2']))).toBe(
      'priority=50,in_port=1 actions=set_field:198.18.0.2->tun_dst,set_field:0x7765->tunnel_id,output:2',
    );
    expect(floodDestinations([flood(['198.18.0.2', 'fd00:198:18::3'])]).sort()).toEqual([
      '198.18.0.2',
      'fd00:198:18::3',
    ]);
  });

  it('arbitrary and mutated bytes give a message or an OpenFlowError, nothing else', () => {
    const seeds = captures.map((c) => Buffer.from(c.hex, 'hex'));
    const mutated = fc
      .tuple(
        fc.constantFrom(...seeds),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
        fc.nat(),
      )
      .map(([b, edits, cut]) => {
        const out = Buffer.from(b);
        for (const [at, v] of edits) out[at % out.length] = v;
        out[0] = 4; // past the version check, into the body
        const len = Math.max(8, cut % (out.length + 1));
        out.writeUInt16BE(len, 2);
        return out.subarray(0, len);
      });
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
          mutated,
        ),
        (b) => {
          try {
            decodeMessage(b);
          } catch (err) {
            expect(err).toBeInstanceOf(OpenFlowError);
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});

/** A fake switch on a unix socket: says HELLO, answers FEATURES, then does what `after` says. */
async function fakeSwitch(after: (sock: net.Socket, m: Message) => void): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-of-'));
  dirs.push(dir);
  const path = join(dir, 'switch.sock');
  const server = net.createServer((sock) => {
    sock.write(encodeMessage({ type: 'hello', xid: 1 }));
    let buf = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 8 && buf.length >= buf.readUInt16BE(2)) {
        const m = decodeMessage(buf.subarray(0, buf.readUInt16BE(2)));
        buf = buf.subarray(buf.readUInt16BE(2));
        if (m.type === 'features_request')
          sock.write(encodeMessage({ type: 'features_reply', xid: m.xid, datapathId: 0xabcn, nTables: 254 }));
        else after(sock, m);
      }
    });
    sock.on('error', () => undefined);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return path;
}

describe('OpenFlow controller connection', () => {
  it("a switch refusing a flow: the batch fails with the switch's reason, and the connection stays up", async () => {
    const path = await fakeSwitch((sock, m) => {
      if (m.type === 'flow_mod')
        sock.write(encodeMessage({ type: 'error', xid: m.xid, errType: 4, code: 3, data: Buffer.alloc(0) }));
      if (m.type === 'barrier_request') sock.write(encodeMessage({ type: 'barrier_reply', xid: m.xid }));
    });
    const conn = new OpenFlowConnection();
    await conn.connect(path);
    expect(conn.datapathId).toBe(0xabcn);
    const [flow] = desiredFlows({ vni: 1, local: [], remote: [], floods: [], heartbeats: [], tunnelSources: [] });
    await expect(conn.apply([], [flow])).rejects.toThrow(/refused 1 flow change\(s\): bad match \(code 3\)/);
    expect(conn.closed).toBe(false);
    conn.close();
  });

  it('garbage from the switch closes the connection with the reason; requests in flight fail, nothing throws', async () => {
    const path = await fakeSwitch((sock, m) => {
      if (m.type === 'flow_stats_request')
        sock.write(Buffer.from('04ff0010000000050000000000000000', 'hex').subarray(0, 8).fill(9, 0, 1)); // version 9
    });
    const conn = new OpenFlowConnection();
    await conn.connect(path);
    const down = new Promise<string>((r) => conn.once('down', r));
    await expect(conn.flows()).rejects.toThrow(/malformed OpenFlow message from the switch: OpenFlow version 9/);
    expect(await down).toMatch(/OpenFlow version 9/);
    expect(conn.closed).toBe(true);
  });

  it('no switch at the socket: connect says so', async () => {
    const conn = new OpenFlowConnection();
    await expect(conn.connect('/nonexistent/weft.ofp', 500)).rejects.toThrow(
      /cannot connect to the OpenFlow socket \/nonexistent\/weft\.ofp/,
    );
  });
});

describe('OVSDB client', () => {
  it('splits JSON texts sent back to back, in any fragments, with brackets inside strings', () => {
    const texts = [
      '{"id":1,"result":[{"rows":[{"name":"a}b"}]}],"error":null}',
      '{"id":null,"method":"echo","params":["[x\\"]"]}',
      '[1,{"a":[2]}]',
    ];
    const stream = texts.join('');
    fc.assert(
      fc.property(fc.array(fc.nat({ max: stream.length }), { maxLength: 10 }), (cuts) => {
        const points = [...new Set([0, ...cuts, stream.length])].sort((a, b) => a - b);
        const s = new JsonSplitter();
        const out: string[] = [];
        for (let i = 1; i < points.length; i++) out.push(...s.push(stream.slice(points[i - 1], points[i])));
        expect(out).toEqual(texts);
      }),
    );
  });

  it('an operation OVSDB refuses fails the transaction with which operation and why; echo is answered', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'weft-ovsdb-'));
    dirs.push(dir);
    const path = join(dir, 'db.sock');
    let echoed = false;
    const server = net.createServer((sock) => {
      sock.write(JSON.stringify({ id: 'e1', method: 'echo', params: [] }));
      sock.setEncoding('utf8');
      const split = new JsonSplitter();
      sock.on('data', (d: string) => {
        for (const t of split.push(d)) {
          const m = JSON.parse(t) as { id: unknown; method?: string; result?: unknown };
          if (m.id === 'e1') echoed = true;
          if (m.method === 'transact')
            sock.write(
              JSON.stringify({
                id: m.id,
                result: [
                  {},
                  {
                    error: 'constraint violation',
                    details:
                      'Transaction causes multiple rows in "Bridge" table to have identical values (weft-ovs) for index on column "name".',
                  },
                ],
                error: null,
              }),
            );
        }
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(path, r));
    const db = new OvsdbClient(`unix:${path}`);
    await db.connect();
    await expect(
      db.transact([
        { op: 'select', table: 'Bridge', where: [] },
        { op: 'insert', table: 'Bridge', row: { name: 'weft-ovs' } },
      ]),
    ).rejects.toThrow(/OVSDB refused insert on Bridge: constraint violation \(Transaction causes multiple rows/);
    expect(echoed).toBe(true);
    db.close();
  });

  it('nothing listening: connect says where it looked and what to check', async () => {
    const db = new OvsdbClient('unix:/nonexistent/db.sock');
    await expect(db.connect()).rejects.toThrow(
      /cannot reach ovsdb-server at unix:\/nonexistent\/db\.sock .*is Open vSwitch running/,
    );
    await expect(new OvsdbClient('tcp:nowhere').connect()).rejects.toThrow(/expected unix:PATH or tcp:HOST:PORT/);
  });
});
