import { afterEach, describe, expect, it } from 'vitest';
import { GCounter } from '../../../examples/gossip-counter.js';
import {
  BytesGossipData,
  type MeshLink,
  connectInMemory,
  type Mesh,
  PeerRecords,
  type EntryCodec,
} from '../../../mesh/index.js';
import { Tag, encodeMessage } from '../../../mesh/messages.js';
import { eventually, sleep } from '../../harness/cluster.js';
import { testMesh } from '../../harness/memory-mesh.js';

let meshes: Mesh[] = [];
function make(n: number, over = {}): Mesh[] {
  const ms = Array.from({ length: n }, (_, i) => testMesh(`p${i}`, over));
  meshes.push(...ms);
  return ms;
}
afterEach(() => {
  for (const m of meshes) m.stop();
  meshes = [];
});

function converged(ms: Mesh[]): boolean {
  const first = JSON.stringify(ms[0].topology.snapshot());
  return ms[0].topology.entries.size === ms.length && ms.every((m) => JSON.stringify(m.topology.snapshot()) === first);
}

/** A random connected graph: a spanning chain plus extra random edges. */
function randomGraph(ms: Mesh[], extra: number): void {
  const order = [...ms].sort(() => Math.random() - 0.5);
  for (let i = 1; i < order.length; i++) connectInMemory(order[i], order[Math.floor(Math.random() * i)]);
  for (let k = 0; k < extra; k++) {
    const a = ms[Math.floor(Math.random() * ms.length)];
    const b = ms[Math.floor(Math.random() * ms.length)];
    if (a !== b && !a.connections.has(b.name)) connectInMemory(a, b);
  }
}

describe('mesh over in-memory links', () => {
  it('every peer converges on the same full topology (delta gossip)', async () => {
    const ms = make(40);
    randomGraph(ms, 60);
    await eventually('topologies to converge', async () => converged(ms), 10_000, 20);
  });

  it('converges the same way with the full-state baseline', async () => {
    const ms = make(20, { fullStateGossip: true });
    randomGraph(ms, 20);
    await eventually('topologies to converge', async () => converged(ms), 10_000, 20);
  });

  it('carries unicast across hops and broadcasts to each peer exactly once', async () => {
    const ms = make(5);
    for (let i = 0; i + 1 < ms.length; i++) connectInMemory(ms[i], ms[i + 1]);
    const got: string[][] = ms.map(() => []);
    const handles = ms.map((m, i) =>
      m.registerChannel('test', {
        gossip: () => null,
        onGossip: () => null,
        onUnicast: (src, p) => got[i].push(`u:${src}:${Buffer.from(p).toString()}`),
        onBroadcast: (src, p) => got[i].push(`b:${src}:${Buffer.from(p).toString()}`),
      }),
    );
    await eventually('a line of five to converge', async () => converged(ms), 5000, 20);
    expect(ms[0].routes.unicastAll.get(ms[4].name)).toBe(ms[1].name);
    expect(handles[0].unicast(ms[4].name, Buffer.from('hi'))).toBe(true);
    handles[2].broadcast(Buffer.from('all'));
    await eventually('delivery', async () => got[4].length === 2 && got[0].length === 1, 2000, 10);
    await sleep(50);
    expect(got[4].sort()).toEqual([`b:${ms[2].name}:all`, `u:${ms[0].name}:hi`].sort());
    for (const i of [0, 1, 3]) expect(got[i]).toEqual([`b:${ms[2].name}:all`]);
    expect(got[2]).toEqual([]);
    expect(handles[0].unicast('02:ff:ff:ff:ff:ff', Buffer.from('x'))).toBe(false);
  });

  it('refuses a unicast or broadcast naming a directly connected peer, or the receiver, as its source when another peer sends it', async () => {
    // a, b, c in a triangle; d hangs off a. b has passed the handshake (it has the password) and
    // writes messages of its own making on its connection to a.
    const [a, b, c, d] = make(4);
    connectInMemory(a, b);
    connectInMemory(b, c);
    connectInMemory(c, a);
    connectInMemory(d, a);
    const got = new Map<Mesh, string[]>([a, b, c, d].map((m) => [m, []]));
    const handles = [a, b, c, d].map((m) =>
      m.registerChannel('test', {
        gossip: () => null,
        onGossip: () => null,
        onUnicast: (src, p) => got.get(m)!.push(`u:${src}:${Buffer.from(p).toString()}`),
        onBroadcast: (src, p) => got.get(m)!.push(`b:${src}:${Buffer.from(p).toString()}`),
      }),
    );
    await eventually('the four to converge', async () => converged([a, b, c, d]), 5000, 10);
    const forge = (src: string, dst: string | null, text: string) =>
      b.connections
        .get(a.name)!
        .link.send(
          encodeMessage(
            dst
              ? { tag: Tag.Unicast, channel: 'test', src, dst, payload: Buffer.from(text) }
              : { tag: Tag.Broadcast, channel: 'test', src, payload: Buffer.from(text) },
          ),
        );
    forge(c.name, a.name, 'as c to a');
    forge(c.name, d.name, 'as c to d, through a');
    forge(c.name, null, 'broadcast as c');
    forge(a.name, a.name, 'as a itself');
    // b may speak as itself; d is a's neighbour too, so b cannot speak as d. c's and d's own words arrive.
    forge(b.name, a.name, 'as b');
    forge(d.name, a.name, 'as d');
    handles[2].unicast(a.name, Buffer.from('c itself'));
    handles[2].broadcast(Buffer.from('c broadcasts'));
    handles[3].unicast(c.name, Buffer.from('d to c, through a'));
    await eventually('the genuine messages', async () => got.get(a)!.length >= 3 && got.get(d)!.length >= 1, 2000, 10);
    await sleep(50);
    expect(got.get(a)!.sort()).toEqual([`u:${b.name}:as b`, `u:${c.name}:c itself`, `b:${c.name}:c broadcasts`].sort());
    expect(got.get(c)).toEqual([`u:${d.name}:d to c, through a`]);
    // c's broadcast reaches d through a (a relays its neighbour's own broadcast); the forged one does not.
    expect(got.get(d)).toEqual([`b:${c.name}:c broadcasts`]);
    expect(a.stats.forgedSources).toBe(5);
    // A source further away is taken on the relaying peer's word: in a line p-q-r, q relays r's messages.
    const [p, q, r] = make(3);
    connectInMemory(p, q);
    connectInMemory(q, r);
    const heard: string[] = [];
    p.registerChannel('test', {
      gossip: () => null,
      onGossip: () => null,
      onUnicast: (src) => heard.push(src),
      onBroadcast: (src) => heard.push(src),
    });
    const hr = r.registerChannel('test', { gossip: () => null, onGossip: () => null });
    await eventually('the line to converge', async () => converged([p, q, r]), 5000, 10);
    hr.unicast(p.name, Buffer.from('x'));
    hr.broadcast(Buffer.from('y'));
    await eventually('relayed', async () => heard.length === 2, 2000, 10);
    expect(heard).toEqual([r.name, r.name]);
    expect(p.stats.forgedSources).toBe(0);
  });

  it('runs the example counter to the same value everywhere', async () => {
    const ms = make(6);
    randomGraph(ms, 3);
    const counters = ms.map((m) => new GCounter(m));
    counters[0].increment();
    counters[5].increment();
    counters[5].increment();
    await eventually('counters to agree', async () => counters.every((c) => c.value === 3), 5000, 10);
  });

  it('settles simultaneous connections in both directions the same way on both ends', async () => {
    for (let round = 0; round < 20; round++) {
      const [a, b] = make(2);
      connectInMemory(a, b);
      connectInMemory(b, a);
      await eventually(
        'one connection each',
        async () => a.connections.size === 1 && b.connections.size === 1,
        2000,
        5,
      );
      await sleep(20);
      expect(a.connections.size).toBe(1);
      expect(a.connections.get(b.name)!.link.connUid).toBe(b.connections.get(a.name)!.link.connUid);
    }
  });

  it('the connection limit never locks a peer out of the mesh', async () => {
    const [hub, x, y] = make(3, { connLimit: 2 });
    connectInMemory(x, hub);
    connectInMemory(y, hub);
    connectInMemory(x, y);
    await eventually('triangle to converge', async () => converged([hub, x, y]), 3000, 10);
    // A newcomer that nobody else knows is accepted although the hub is at its limit.
    const [lonely] = make(1, { connLimit: 2 });
    expect(connectInMemory(lonely, hub, false)).toBe(true);
    await eventually('newcomer joined', async () => hub.topology.entries.has(lonely.name), 2000, 10);
    // A peer already reachable through others is refused, with the reason.
    const [late] = make(1);
    connectInMemory(late, x);
    await eventually('late peer known to the hub', async () => hub.routes.unicastAll.has(late.name), 2000, 10);
    let refusal = '';
    late.once('connection-removed', (_c: unknown, reason: string) => (refusal = reason));
    const before = hub.connections.size;
    expect(connectInMemory(late, hub, false)).toBe(false);
    expect(hub.connections.size).toBe(before);
    await eventually('late peer told why', async () => refusal, 2000, 10);
    expect(refusal).toMatch(/connection limit \(2\) reached/);
  });

  it('a restarted peer (same name, new uid) supersedes its old incarnation', async () => {
    const [a, b] = make(2);
    connectInMemory(a, b);
    await eventually('converge', async () => converged([a, b]), 2000, 10);
    // Push b's version up so the new incarnation starts below it.
    for (let i = 0; i < 5; i++) {
      const [t] = make(1);
      connectInMemory(t, b);
      await sleep(5);
      t.stop();
    }
    await sleep(50);
    const oldVersion = a.topology.get(b.name)!.version;
    b.stop();
    const b2 = testMesh('p1-again', { name: b.name });
    meshes.push(b2);
    connectInMemory(b2, a);
    await eventually(
      'new incarnation everywhere',
      async () => {
        const e = a.topology.get(b.name);
        return e?.uid === b2.config.uid && e.version > oldVersion && b2.ownEntry.version > oldVersion;
      },
      3000,
      10,
    );
  });

  it("per-peer records: a record echoed back by anti-entropy stays as it is; a restarted peer's record supersedes its old one", async () => {
    const codec: EntryCodec<string> = { toWire: (e) => e, fromWire: (w) => String(w), key: (e) => e };
    const [a, b, c] = make(3);
    const records = (m: Mesh) => new PeerRecords(m, 'records', codec, 1000);
    const [ra, rb] = [records(a), records(b), records(c)];
    connectInMemory(a, b);
    connectInMemory(b, c);
    connectInMemory(a, c);
    rb.setLocal(['x']);
    let changes = 0;
    ra.onChange(() => changes++);
    await eventually("b's record everywhere", async () => ra.records.get(b.name)?.entries[0] === 'x', 2000, 10);
    const version = rb.records.get(b.name)!.version;
    changes = 0;
    await sleep(1000); // five anti-entropy rounds (testMesh: every 200 ms)
    expect(rb.records.get(b.name)!.version).toBe(version);
    expect(changes).toBe(0);

    b.stop();
    const b2 = testMesh('p1-again', { name: b.name });
    meshes.push(b2);
    const rb2 = records(b2);
    connectInMemory(b2, a);
    await eventually(
      "the new incarnation's empty record everywhere",
      async () => ra.records.get(b.name)?.entries.length === 0 && rb2.records.get(b.name)!.version > version,
      3000,
      10,
    );
  });

  it('per-peer records: anti-entropy sends a neighbour only the records it lacks', async () => {
    const codec: EntryCodec<string> = { toWire: (e) => e, fromWire: (w) => String(w), key: (e) => e };
    const [a, b] = make(2);
    const [ra, rb] = [new PeerRecords(a, 'records', codec, 1000), new PeerRecords(b, 'records', codec, 1000)];
    const big = Array.from({ length: 5000 }, (_, i) => `entry-${i}`);
    ra.setLocal(big);
    connectInMemory(a, b);
    await eventually("a's record at b", async () => rb.records.get(a.name)?.entries.length === big.length, 2000, 10);
    const received: number[] = [];
    const onGossip = rb.onGossip.bind(rb);
    rb.onGossip = (update: Uint8Array) => {
      received.push(update.length);
      return onGossip(update);
    };
    await sleep(1000); // five anti-entropy rounds
    expect(received).toEqual([]);

    // A change that b missed (the record replaced without gossip) comes with the next round, alone.
    const rec = { peer: a.name, version: ra.records.get(a.name)!.version + 1, entries: ['only'] };
    ra.records.set(a.name, rec);
    await eventually('the missed change at b', async () => rb.records.get(a.name)?.entries[0] === 'only', 2000, 10);
    expect(received.length).toBeGreaterThan(0);
    expect(Math.max(...received)).toBeLessThan(200);
  });

  it('per-peer records: a digest naming a record differently (same version, other content) converges both ways', () => {
    const codec: EntryCodec<string> = { toWire: (e) => e, fromWire: (w) => String(w), key: (e) => e };
    const [a, b] = make(2);
    const [ra, rb] = [new PeerRecords(a, 'records', codec, 1000), new PeerRecords(b, 'records', codec, 1000)];
    const p = '02:00:00:00:00:99';
    ra.records.set(p, { peer: p, version: 3, entries: ['x'] });
    rb.records.set(p, { peer: p, version: 3, entries: ['y'] });
    const res = ra.compareDigest(rb.digest());
    expect(res.remoteHasMore).toBe(true);
    expect(res.update).not.toBeNull();
    rb.onGossip(res.update!.encode());
    ra.onGossip(rb.compareDigest(ra.digest()).update!.encode());
    expect(ra.records.get(p)!.entries).toEqual(rb.records.get(p)!.entries);
    expect(ra.compareDigest(rb.digest())).toEqual({ update: null, remoteHasMore: false });
    expect(() => ra.compareDigest(new Uint8Array([0x91, 0x93, 1, 2, 3]))).toThrow(/digest/);
  });

  it('drops peers that become unreachable', async () => {
    const [a, b, c] = make(3);
    connectInMemory(a, b);
    connectInMemory(b, c);
    await eventually('converge', async () => converged([a, b, c]), 2000, 10);
    c.stop();
    await eventually(
      'c gone from a and b',
      async () => !a.topology.entries.has(c.name) && !b.topology.entries.has(c.name),
      3000,
      10,
    );
    expect(a.routes.unicastAll.has(c.name)).toBe(false);
  });

  it('closes a connection that sends garbage, and keeps serving the others', async () => {
    const [a, b] = make(2);
    connectInMemory(a, b);
    let closedWith = '';
    const evil: MeshLink = {
      remote: { name: '02:66:66:66:66:66', nickname: 'evil', uid: '0000000000000666', port: 6783 },
      outbound: false,
      connUid: 1n,
      remoteAddr: '198.18.0.66:1',
      direct: false,
      send: () => undefined,
      close: (r) => (closedWith = r),
      onMessage: null,
      onClose: null,
    };
    expect(a.addConnection(evil).ok).toBe(true);
    evil.onMessage!(Buffer.from([0xc1, 0xff, 0x00]));
    expect(closedWith).toMatch(/protocol error/);
    expect(a.connections.has('02:66:66:66:66:66')).toBe(false);
    const counters = [a, b].map((m) => new GCounter(m));
    counters[1].increment();
    await eventually('a still gossips with b', async () => counters[0].value === 1, 2000, 10);
  });

  it('flushNow sends updates waiting for the gossip delay at once (a peer leaving the mesh)', async () => {
    const [a, b] = make(2, { gossipDelay: 60_000 });
    connectInMemory(a, b);
    const got: string[] = [];
    a.registerChannel('handover', {
      gossip: () => null,
      onGossip: (p) => (got.push(Buffer.from(p).toString()), null),
    });
    const sender = b.registerChannel('handover', { gossip: () => null, onGossip: () => null });
    await eventually('connected', async () => a.connections.get(b.name)?.established, 2000, 10);
    sender.gossipUpdate(new BytesGossipData(Buffer.from('ranges')));
    await sleep(50);
    expect(got).toEqual([]);
    b.flushNow();
    await eventually('delivered', async () => got.length === 1, 2000, 10);
    expect(got).toEqual(['ranges']);
  });

  it('a gossip handler that throws rejects the update but keeps the connection', async () => {
    const [a, b] = make(2);
    connectInMemory(a, b);
    a.registerChannel('picky', {
      gossip: () => null,
      onGossip: () => {
        throw new Error('bad update');
      },
    });
    const sender = b.registerChannel('picky', { gossip: () => null, onGossip: () => null });
    await eventually('connected', async () => a.connections.get(b.name)?.established, 2000, 10);
    sender.gossipUpdate(new BytesGossipData(Buffer.from('x')));
    await eventually('rejection counted', async () => a.stats.gossipErrors === 1, 2000, 10);
    expect(a.connections.has(b.name)).toBe(true);
  });
});
