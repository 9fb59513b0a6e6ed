// The VXLAN heartbeats' acknowledgements between two routers on an in-memory mesh. The kernel's
// counting is replaced by counters the test moves (the `counter` option, as the OVS datapath uses);
// heartbeat datagrams go to a socket of the test's own on loopback.
import dgram from 'node:dgram';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FastdpHealth } from '../../../datapath/vxlan/health.js';
import { connectInMemory, pack, unpack, type Mesh, type PeerName } from '../../../mesh/index.js';
import { Tag } from '../../../mesh/messages.js';
import { eventually, sleep } from '../../harness/cluster.js';
import { testMesh } from '../../harness/memory-mesh.js';

const INTERVAL = 50;
let sink: dgram.Socket;
let meshes: Mesh[] = [];
let healths: FastdpHealth[] = [];

beforeEach(async () => {
  sink = dgram.createSocket('udp4');
  await new Promise<void>((r) => sink.bind(0, '127.0.0.1', r));
});

afterEach(() => {
  for (const h of healths) h.stop();
  for (const m of meshes) m.stop();
  sink.close();
  meshes = [];
  healths = [];
});

/** Heartbeats from each peer arrive while `up` says so: each poll of the counter finds one more. */
function counterFor(up: () => boolean) {
  const counts = new Map<PeerName, number>();
  return async (peers: PeerName[]) => {
    for (const p of peers) counts.set(p, (counts.get(p) ?? 0) + (up() ? 1 : 0));
    return new Map(counts);
  };
}

function health(m: Mesh, up: () => boolean, remindMs?: number): FastdpHealth {
  const port = sink.address().port;
  const h = new FastdpHealth(
    m,
    port,
    () => 1450,
    () => '127.0.0.1',
    {
      intervalMs: INTERVAL,
      remindMs,
      counter: counterFor(up),
    },
  );
  healths.push(h);
  return h;
}

/** The acknowledgements a mesh sends on the fastdp channel, decoded. */
function sent(m: Mesh): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  m.on('sent', (msg) => {
    if (msg.tag === Tag.Unicast && msg.channel === 'fastdp') out.push(unpack(msg.payload) as Record<string, unknown>);
  });
  return out;
}

async function pair(): Promise<[Mesh, Mesh]> {
  const a = testMesh('a');
  const b = testMesh('b');
  meshes.push(a, b);
  connectInMemory(a, b);
  await eventually('connected', async () => a.neighbours().length === 1 && b.neighbours().length === 1, 2000, 10);
  return [a, b];
}

describe('fastdp heartbeat acknowledgements', () => {
  it('between two routers of this version: healthy both ways, then quiet while nothing changes', async () => {
    const [a, b] = await pair();
    const fromA = sent(a);
    const fromB = sent(b);
    const ha = health(a, () => true);
    const hb = health(b, () => true);
    ha.start();
    hb.start();
    await eventually('healthy both ways', async () => ha.healthy(b.name) && hb.healthy(a.name), 2000, 10);
    // Each first acknowledges per poll (saying it reads states), then tells the state once.
    await eventually(
      'states told both ways',
      async () => fromA.some((m) => m.every === 10_000) && fromB.some((m) => m.every === 10_000),
      2000,
      10,
    );
    // Twenty polls later: no acknowledgement more (the old protocol sent one per poll), still healthy.
    const [na, nb] = [fromA.length, fromB.length];
    await sleep(20 * INTERVAL);
    expect(fromA.length - na).toBe(0);
    expect(fromB.length - nb).toBe(0);
    expect(ha.healthy(b.name) && hb.healthy(a.name)).toBe(true);
    // What they sent: acknowledgements that say they read states.
    expect(fromA.length).toBeGreaterThan(0);
    expect(fromA.every((m) => typeof m.ack === 'number' && (m.states === true || m.every === 10_000))).toBe(true);
  });

  it('reminders keep the path healthy past the window a single acknowledgement gives', async () => {
    const [a, b] = await pair();
    const ha = health(a, () => true, 200);
    const hb = health(b, () => true, 200);
    ha.start();
    hb.start();
    await eventually('healthy', async () => ha.healthy(b.name), 2000, 10);
    // One acknowledgement is good for 2 x 200 + 500 ms; watch for three times that.
    const until = Date.now() + 3 * 900;
    let lapses = 0;
    while (Date.now() < until) {
      if (!ha.healthy(b.name)) lapses++;
      await sleep(20);
    }
    expect(lapses).toBe(0);
  });

  it('a path that stops carrying heartbeats is reported at once, and recovers', async () => {
    const [a, b] = await pair();
    let aToB = true;
    const ha = health(a, () => true);
    const hb = health(b, () => aToB); // B counts what A sends
    let recovered = 0;
    ha.onHealthy(() => recovered++);
    ha.start();
    hb.start();
    await eventually('healthy', async () => ha.healthy(b.name) && hb.healthy(a.name), 2000, 10);
    aToB = false;
    // Well inside the 20 s a reminder-reading sender would otherwise wait: B says they stopped.
    await eventually('A unhealthy', async () => !ha.healthy(b.name), 3000, 10);
    expect(ha.reason(b.name)).toMatch(
      /VXLAN heartbeats not arriving at the peer \(it said so \d+s ago; is UDP \d+ blocked/,
    );
    expect(hb.healthy(a.name)).toBe(true); // the other direction is untouched
    const before = recovered;
    aToB = true;
    await eventually('A healthy again', async () => ha.healthy(b.name), 3000, 10);
    expect(recovered).toBeGreaterThan(before);
  });

  it('with a router of the earlier version: acknowledges every heartbeat it counts, and reads its acknowledgements per second', async () => {
    const [a, old] = await pair();
    const fromA = sent(a);
    let oldToA = true;
    const ha = health(a, () => oldToA);
    // The earlier router: acknowledges each poll without `every`, and throws on anything but `{ ack }`.
    let acking = true;
    const got: unknown[] = [];
    const raw = old.registerChannel('fastdp', {
      gossip: () => null,
      onGossip: () => null,
      onUnicast: (_src, payload) => {
        const v = unpack(payload) as { ack?: unknown };
        if (typeof v.ack !== 'number') throw new Error('fastdp acknowledgement is malformed');
        got.push(v);
      },
    });
    let n = 0;
    const timer = setInterval(() => acking && raw.unicast(a.name, pack({ ack: ++n })), INTERVAL);
    try {
      ha.start();
      await eventually('healthy', async () => ha.healthy(old.name), 2000, 10);
      const before = got.length;
      await sleep(20 * INTERVAL);
      // Its heartbeats keep being acknowledged, as it expects (about one per poll).
      expect(got.length - before).toBeGreaterThanOrEqual(5);
      // Its heartbeats stop arriving: an earlier router is never told "missing" (it would refuse it).
      oldToA = false;
      await sleep(30 * INTERVAL);
      expect(fromA.length).toBeGreaterThan(0);
      expect(fromA.every((m) => typeof m.ack === 'number' && m.missing === undefined && m.every === undefined)).toBe(
        true,
      );
      expect(old.stats.gossipErrors).toBe(0);
      acking = false;
      // Its silence counts within the short window (3 polls), not the reminders' one.
      await eventually('unhealthy', async () => !ha.healthy(old.name), 3000, 10);
      expect(ha.reason(old.name)).toMatch(/VXLAN heartbeats unacknowledged for \d+s/);
    } finally {
      clearInterval(timer);
    }
  });

  it('one direction blocked from the start: the other still drops within the short window when it breaks', async () => {
    const [a, b] = await pair();
    let aToB = false; // A's heartbeats never reach B: B never acknowledges them
    let bToA = true;
    const ha = health(a, () => bToA); // A counts what B sends
    const hb = health(b, () => aToB);
    ha.start();
    hb.start();
    await eventually('B healthy towards A', async () => hb.healthy(a.name), 2000, 10);
    await sleep(10 * INTERVAL);
    expect(ha.healthy(b.name)).toBe(false);
    // A acknowledges every poll (it has never heard that B reads states): B keeps the short window.
    expect(hb.paths.get(a.name)!.every).toBe(0);
    bToA = false;
    await eventually('B unhealthy', async () => !hb.healthy(a.name), 3000, 10);
    aToB = true;
  });

  it('a peer whose count the counter no longer returns (its rule or flow gone) is reported missing', async () => {
    const [a, b] = await pair();
    let counting = true;
    const ha = health(a, () => true);
    const port = sink.address().port;
    const inner = counterFor(() => true);
    const hb = new FastdpHealth(
      b,
      port,
      () => 1450,
      () => '127.0.0.1',
      {
        intervalMs: INTERVAL,
        counter: async (peers) => (counting ? inner(peers) : new Map()),
      },
    );
    healths.push(hb);
    ha.start();
    hb.start();
    await eventually('states told', async () => ha.paths.get(b.name)?.every === 10_000 && ha.healthy(b.name), 3000, 10);
    counting = false;
    await eventually('A unhealthy', async () => !ha.healthy(b.name), 3000, 10);
    expect(ha.reason(b.name)).toMatch(/not arriving at the peer/);
  });

  it('refuses malformed acknowledgements without changing what it knows', async () => {
    const [a, b] = await pair();
    const ha = health(a, () => true);
    const raw = b.registerChannel('fastdp', { gossip: () => null, onGossip: () => null, onUnicast: () => undefined });
    ha.start();
    await eventually('sending', async () => ha.paths.has(b.name), 2000, 10);
    for (const bad of [
      { ack: 'x' },
      { missing: 'yes' },
      { ack: 1, every: 10 ** 9 },
      { ack: 1, every: 60_000 },
      { ack: 1, every: 0.5 },
      { ack: 1, every: -1000 },
      [],
      7,
    ])
      raw.unicast(a.name, pack(bad));
    await sleep(5 * INTERVAL);
    expect(ha.healthy(b.name)).toBe(false);
    expect(ha.paths.get(b.name)!.every).toBe(0);
    expect(a.stats.gossipErrors).toBe(8);
    // A well-formed one still counts.
    raw.unicast(a.name, pack({ ack: 1, every: 1000 }));
    await eventually('healthy', async () => ha.healthy(b.name), 2000, 10);
  });
});
