// Tombstones of register tables (policy rules, services) are collected once every
// member of the mesh holds them, and a removed value never comes back: not from a
// member that was down with the old value, not after restarts, not from a late
// tombstone over a value put again.
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  compareRegisters,
  connectInMemory,
  randomPeerName,
  type Register,
  type Mesh,
  pack,
  type PeerName,
  RegisterTable,
  type RegisterCodec,
} from '../../../mesh/index.js';
import { testMesh } from '../../harness/memory-mesh.js';
import { eventually, sleep } from '../../harness/cluster.js';

const codec: RegisterCodec<string> = {
  what: 'value',
  check(value) {
    if (typeof value !== 'string') throw new Error('not a string');
    return value;
  },
  fail: (message) => new Error(message),
  maxEntries: 1000,
};

const TIMINGS = { intervalMs: 20, delayMs: 100, retainMs: 2000 };

/** A store kept in memory across "restarts" of a peer. */
class MemoryStore {
  list: unknown[] = [];
  load<T>(check: (item: unknown) => T): T[] {
    return structuredClone(this.list).map(check);
  }
  save(list: unknown[]): boolean {
    this.list = structuredClone(list);
    return true;
  }
}

/** One peer: its mesh and table, which a restart replaces, and its stores, which survive it. */
class Peer {
  mesh!: Mesh;
  table!: RegisterTable<string>;
  readonly registers = new MemoryStore();
  readonly members = new MemoryStore();
  /** Registers seen in force here, by id, and those a removal merged here superseded (kept across restarts). */
  readonly seenLive = new Map<string, Register<string>[]>();
  readonly removed = new Set<string>();
  readonly violations: string[] = [];
  up = false;

  /** Peers known from elsewhere before members were kept (IPAM's ring owners, in a router). */
  knownPeers: PeerName[] = [];

  constructor(
    readonly nickname: string,
    readonly timings = TIMINGS,
    readonly name?: PeerName,
    startNow = true,
  ) {
    if (startNow) this.start();
  }

  start(): void {
    this.mesh = testMesh(this.nickname, this.name ? { name: this.name } : {});
    (this as { name?: PeerName }).name = this.mesh.name;
    this.table = new RegisterTable(this.mesh, 'things', codec, this.registers, {
      store: this.members,
      timings: this.timings,
      knownPeers: () => this.knownPeers,
    });
    this.table.onChange(() => this.observe());
    this.observe();
    this.up = true;
  }

  stop(): void {
    this.table.stop();
    this.mesh.stop();
    this.up = false;
  }

  restart(): void {
    this.stop();
    this.start();
  }

  /**
   * Every state the table passes through: a value (this register: id, version, origin, value) seen
   * here, then superseded by a removal merged here, must never be in force here again.
   */
  observe(): void {
    const key = (r: Register<string>) => JSON.stringify([r.id, r.version, r.origin, r.value]);
    for (const r of this.table.all()) {
      const seen = this.seenLive.get(r.id) ?? [];
      if (r.value !== null) {
        if (this.removed.has(key(r)))
          this.violations.push(
            `${this.nickname}: ${r.id}=${r.value} (version ${r.version}) in force after its removal`,
          );
        else if (!seen.some((x) => key(x) === key(r))) this.seenLive.set(r.id, [...seen, r]);
      } else for (const x of seen) if (compareRegisters(x, r) < 0) this.removed.add(key(x));
    }
  }

  ids(): string[] {
    return this.table
      .all()
      .map((r) => r.id)
      .sort();
  }
}

const peers: Peer[] = [];
afterEach(() => {
  for (const p of peers.splice(0)) if (p.up) p.stop();
});

function newPeers(n: number, timings = TIMINGS): Peer[] {
  const ps = Array.from({ length: n }, (_, i) => new Peer(`p${i}`, timings));
  peers.push(...ps);
  return ps;
}

function connected(a: Peer, b: Peer): boolean {
  return Boolean(a.mesh.connections.get(b.mesh.name)?.established && b.mesh.connections.get(a.mesh.name)?.established);
}

function connectAll(ps: Peer[]): void {
  for (let i = 0; i < ps.length; i++)
    for (let j = i + 1; j < ps.length; j++)
      if (ps[i].up && ps[j].up && !ps[i].mesh.connections.has(ps[j].mesh.name)) connectInMemory(ps[i].mesh, ps[j].mesh);
}

describe('tombstone collection', () => {
  it('with every member up, a removal is collected everywhere and the table is as if the value had never been', async () => {
    const [a, b, c] = newPeers(3);
    connectInMemory(a.mesh, b.mesh);
    connectInMemory(b.mesh, c.mesh);
    a.table.put('x', 'one');
    a.table.put('y', 'two');
    await eventually('x everywhere', async () => [a, b, c].every((p) => p.table.get('x') === 'one'), 3000, 10);
    expect(c.table.remove('x')).toBe(true);
    await eventually('the removal everywhere', async () => [a, b, c].every((p) => p.table.get('x') === null), 3000, 10);
    expect(a.ids()).toEqual(['x', 'y']); // the tombstone, held at first
    await eventually('collected everywhere', async () => [a, b, c].every((p) => p.ids().join() === 'y'), 5000, 20);
    // The stores shrink too: what a restart would load.
    expect(b.registers.list.map((w) => (w as unknown[])[0])).toEqual(['y']);
    for (const p of [a, b, c]) expect(p.table.tombstoneStatus()).toMatchObject({ tombstones: 0, members: 3 });
    // Put again, the value is in force everywhere, above the version that was removed.
    const again = a.table.put('x', 'three');
    expect(again.version).toBeGreaterThan(2);
    await eventually('x again everywhere', async () => [a, b, c].every((p) => p.table.get('x') === 'three'), 3000, 10);
    for (const p of [a, b, c]) expect(p.violations).toEqual([]);
  });

  it('a member that is down holds collection back, also after every other peer restarted; back with the old value, it takes the removal', async () => {
    const [a, b, c] = newPeers(3);
    connectAll([a, b, c]);
    a.table.put('x', 'allow');
    await eventually('x everywhere', async () => [a, b, c].every((p) => p.table.get('x') === 'allow'), 3000, 10);
    c.stop(); // with x in force in its store
    await eventually('c gone from the topology', async () => !a.mesh.inTopology(c.mesh.name), 3000, 20);
    b.table.remove('x');
    await eventually('the removal at a', async () => a.table.get('x') === null, 3000, 10);
    await sleep(TIMINGS.delayMs * 4);
    // Both restart: nothing of c is in memory anywhere now; they must remember it as a member from their stores.
    a.stop();
    b.stop();
    a.start();
    b.start();
    connectAll([a, b]);
    await eventually('b back', async () => connected(a, b), 3000, 10);
    await sleep(TIMINGS.delayMs * 4);
    for (const p of [a, b]) {
      expect(p.ids()).toEqual(['x']);
      expect(p.table.tombstoneStatus().waitingFor).toEqual([c.mesh.name]);
    }
    c.start();
    expect(c.table.get('x')).toBe('allow');
    connectAll([a, b, c]);
    await eventually('c back', async () => connected(a, c) && connected(b, c), 3000, 10);
    await eventually('c took the removal', async () => c.table.get('x') === null, 3000, 10);
    await eventually('collected everywhere', async () => [a, b, c].every((p) => p.ids().length === 0), 5000, 20);
    await sleep(TIMINGS.delayMs * 2);
    for (const p of [a, b, c]) {
      expect(p.table.get('x')).toBeNull();
      expect(p.violations).toEqual([]);
    }
  });

  it('weft rmpeer of a member that is gone for good lets the others collect; the word spreads', async () => {
    const [a, b, c] = newPeers(3);
    connectAll([a, b, c]);
    a.table.put('x', 'v');
    await eventually('x everywhere', async () => [a, b, c].every((p) => p.table.get('x') === 'v'), 3000, 10);
    c.stop();
    await eventually('c gone from the topology', async () => !a.mesh.inTopology(c.mesh.name), 3000, 20);
    a.table.remove('x');
    await sleep(TIMINGS.delayMs * 3);
    expect(b.ids()).toEqual(['x']);
    expect(a.table.forgetMember(c.mesh.name)).toBe(true);
    expect(a.table.forgetMember(c.mesh.name)).toBe(false); // once
    expect(a.table.forgetMember(a.mesh.name)).toBe(false); // never itself
    await eventually('collected at a and b', async () => [a, b].every((p) => p.ids().length === 0), 5000, 20);
    // b keeps the removal: a peer that was down when it was made learns it from b.
    expect(b.members.list).toContainEqual(['forgotten', c.mesh.name, expect.any(Number)]);
    expect(b.table.tombstoneStatus().members).toBe(2);
  });

  it('a peer back after an rmpeer is a member again, whatever a peer that missed its return still lists', async () => {
    const [a, b, c, x] = newPeers(4);
    connectAll([a, b, c, x]);
    await eventually('all connected', async () => [a, b, c].every((p) => connected(p, x)), 3000, 10);
    x.stop();
    await eventually('x unreachable', async () => [a, b, c].every((p) => !p.mesh.isReachable(x.mesh.name)), 3000, 10);
    expect(a.table.forgetMember(x.mesh.name)).toBe(true);
    await eventually(
      'the rmpeer at c',
      async () => c.members.list.some((i) => (i as unknown[])[0] === 'forgotten'),
      3000,
      10,
    );
    c.stop(); // it keeps "x removed" and misses x's return
    x.start();
    connectAll([a, b, x]);
    a.table.put('r', 'allow');
    await eventually('r at x', async () => x.table.get('r') === 'allow', 3000, 10);
    x.stop(); // down, with r in force
    await eventually(
      'x gone',
      async () => !a.mesh.isReachable(x.mesh.name) && !b.mesh.isReachable(x.mesh.name),
      3000,
      10,
    );
    a.table.remove('r');
    c.start();
    connectAll([a, b, c]);
    await eventually('c back', async () => connected(a, c) && connected(b, c), 3000, 10);
    await sleep(TIMINGS.delayMs * 5);
    for (const p of [a, b, c]) {
      expect(p.ids(), p.nickname).toEqual(['r']);
      expect(p.table.tombstoneStatus().waitingFor).toEqual([x.mesh.name]);
    }
    x.start();
    connectAll([a, b, c, x]);
    await eventually('collected everywhere', async () => [a, b, c, x].every((p) => p.ids().length === 0), 5000, 20);
    for (const p of [a, b, c, x]) expect(p.violations).toEqual([]);
  });

  it('a peer back after an rmpeer made on a host whose clock is an hour ahead is still a member when it goes down again', async () => {
    const [a, b, x] = newPeers(3);
    connectAll([a, b, x]);
    await eventually('all connected', async () => [a, b].every((p) => connected(p, x)), 3000, 10);
    x.stop();
    await eventually('x unreachable', async () => [a, b].every((p) => !p.mesh.isReachable(x.mesh.name)), 3000, 10);
    const realNow = Date.now.bind(Date);
    const ahead = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + 3_600_000);
    try {
      expect(a.table.forgetMember(x.mesh.name)).toBe(true);
    } finally {
      ahead.mockRestore();
    }
    x.start();
    connectAll([a, b, x]);
    a.table.put('r', 'allow');
    await eventually('r at x', async () => x.table.get('r') === 'allow', 3000, 10);
    x.stop();
    await eventually('x gone', async () => [a, b].every((p) => !p.mesh.isReachable(x.mesh.name)), 3000, 10);
    a.table.remove('r');
    await sleep(TIMINGS.delayMs * 5);
    for (const p of [a, b]) expect(p.table.tombstoneStatus().waitingFor, p.nickname).toEqual([x.mesh.name]);
  });

  it('an rmpeer takes a peer out everywhere although its last sightings were stamped by clocks an hour ahead (run again if one arrived after it)', async () => {
    const [a, b, x] = newPeers(3);
    connectAll([a, b, x]);
    a.table.put('r', 'allow');
    await eventually('r at x', async () => x.table.get('r') === 'allow', 3000, 10);
    const realNow = Date.now.bind(Date);
    const ahead = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + 3_600_000);
    try {
      x.stop();
      await eventually('x unreachable', async () => [a, b].every((p) => !p.mesh.isReachable(x.mesh.name)), 3000, 10);
    } finally {
      ahead.mockRestore();
    }
    a.table.remove('r');
    expect(a.table.forgetMember(x.mesh.name)).toBe(true);
    // A sighting stamped by a fast clock may arrive after the rmpeer, and count as later (as a return
    // during a partition would): status still names x, and the rmpeer run again is later than it.
    await sleep(300);
    a.table.forgetMember(x.mesh.name);
    await eventually('collected at a and b', async () => [a, b].every((p) => p.ids().length === 0), 5000, 20);
    for (const p of [a, b]) expect(p.table.tombstoneStatus().members).toBe(2);
  });

  it('a peer that leaves for good (weft reset) stops holding collection back once it is gone', async () => {
    const [a, b, c] = newPeers(3);
    connectAll([a, b, c]);
    a.table.put('x', 'v');
    await eventually('x everywhere', async () => [a, b, c].every((p) => p.table.get('x') === 'v'), 3000, 10);
    c.table.leaveMesh();
    await sleep(50); // its record on the wire
    c.stop();
    a.table.remove('x');
    await eventually('collected at a and b', async () => [a, b].every((p) => p.ids().length === 0), 5000, 20);
    expect(a.members.list).toContainEqual(['forgotten', c.mesh.name, expect.any(Number)]);
  });

  it('an acknowledgement record with a floor near the version cap is refused whole; puts go on', () => {
    const [a] = newPeers(1);
    const acks = a.mesh.channels.get('things-acks')!.gossiper;
    const other = newPeers(1)[0].mesh.name;
    expect(() => acks.onGossip(pack([[other, 1, [['', 2 ** 51 + 1, 2, '']]]]), other)).toThrow(/floor/);
    expect(() => acks.onGossip(pack([[other, 1, [['not a peer', 0, 4, '']]]]), other)).toThrow(/malformed/);
    expect(() => acks.onGossip(pack([[other, 1, [['x', 1, 9, '']]]]), other)).toThrow(/malformed/);
    expect(() => acks.onGossip(pack([[other, 1, [['x', 1, 0, 'nobody']]]]), other)).toThrow(/malformed/);
    expect(a.table.put('y', 'v').version).toBe(1);
  });

  it('a register at or below a collected tombstone is refused for a while, then taken again and collected again; a value put again wins', async () => {
    const [a, b] = newPeers(2);
    connectAll([a, b]);
    a.table.put('x', 'v');
    a.table.remove('x');
    await eventually('collected', async () => [a, b].every((p) => p.ids().length === 0), 5000, 20);
    // What a late peer would gossip: the old live value, and the tombstone. Both refused within retainMs.
    const old = pack([['x', 1, a.mesh.name, 'v']]);
    const tomb = pack([['x', 2, a.mesh.name, null]]);
    expect(b.table.onGossip(old)).toBeNull();
    expect(b.table.onGossip(tomb)).toBeNull();
    expect(b.ids()).toEqual([]);
    // A value put again (here at a peer that never saw x) starts above the floor it learnt from b.
    const c = newPeers(1)[0];
    connectAll([a, b, c]);
    await eventually('c learnt the floor', async () => c.table.tombstoneStatus().floor >= 2, 3000, 20);
    expect(c.table.put('x', 'new').version).toBeGreaterThan(2);
    await eventually(
      'the new value everywhere',
      async () => [a, b, c].every((p) => p.table.get('x') === 'new'),
      3000,
      10,
    );
    // After retainMs the late tombstone is taken again (it was refused before), and goes again.
    a.table.put('z', 'v');
    a.table.remove('z');
    await eventually('z collected', async () => [a, b, c].every((p) => !p.ids().includes('z')), 5000, 20);
    const zTomb = pack([['z', a.table.tombstoneStatus().floor, a.mesh.name, null]]);
    expect(b.table.onGossip(zTomb)).toBeNull();
    await sleep(TIMINGS.retainMs + TIMINGS.intervalMs * 3);
    expect(b.table.onGossip(zTomb)).not.toBeNull();
    expect(b.ids()).toContain('z');
    await eventually('z collected again', async () => [a, b, c].every((p) => !p.ids().includes('z')), 5000, 20);
    expect(b.table.get('x')).toBe('new');
    for (const p of [a, b, c]) expect(p.violations).toEqual([]);
  });

  it('the first start with collection (an upgrade) takes every peer it knew of as a member: one down then holds collection back', async () => {
    // Three peers' stores as routers before collection left them: x in force, no members kept.
    const names = [randomPeerName(), randomPeerName(), randomPeerName()];
    for (const origin of [2, 0]) {
      const ps = names.map((n, i) => new Peer(`u${i}`, TIMINGS, n, false));
      peers.push(...ps);
      for (const p of ps) p.registers.list = [['x', 1, names[origin], 'allow']];
      // Down: known as the origin of x (first round), or only from IPAM's ring (second).
      if (origin !== 2) for (const p of ps) p.knownPeers = [names[2]];
      const [a, b, o] = ps;
      a.start();
      b.start();
      connectAll([a, b]);
      await eventually('connected', async () => connected(a, b), 3000, 10);
      b.table.remove('x');
      await sleep(TIMINGS.delayMs * 4);
      for (const p of [a, b]) {
        expect(p.ids()).toEqual(['x']);
        expect(p.table.tombstoneStatus().waitingFor).toEqual([names[2]]);
      }
      o.start();
      connectAll(ps);
      await eventually('collected everywhere', async () => ps.every((p) => p.ids().length === 0), 5000, 20);
      for (const p of ps) {
        expect(p.table.get('x')).toBeNull();
        expect(p.violations).toEqual([]);
        p.stop();
      }
    }
  });
});

type Step =
  | { op: 'put'; peer: number; id: string }
  | { op: 'remove'; peer: number; id: string }
  | { op: 'cut'; peer: number }
  | { op: 'heal' }
  | { op: 'restart'; peer: number }
  | { op: 'wait' };

const N = 3;
const arbStep: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constant('put' as const), peer: fc.nat(N - 1), id: fc.constantFrom('a', 'b') }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constant('remove' as const), peer: fc.nat(N - 1), id: fc.constantFrom('a', 'b') }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('cut' as const), peer: fc.nat(N - 1) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'heal' as const }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('restart' as const), peer: fc.nat(N - 1) }) },
  { weight: 2, arbitrary: fc.constant({ op: 'wait' as const }) },
);

describe('tombstone collection under interleavings', () => {
  it('a removed value never comes back at any peer; healed, all agree and every tombstone is collected', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(arbStep, { minLength: 5, maxLength: 20 }), async (steps) => {
        // A short memory of collected tombstones: the members rule alone must keep removed values out.
        const ps = newPeers(N, { ...TIMINGS, retainMs: 50 });
        try {
          connectAll(ps);
          let n = 0;
          for (const s of steps) {
            if (s.op === 'put') ps[s.peer].table.put(s.id, `v${n++}`);
            else if (s.op === 'remove') ps[s.peer].table.remove(s.id);
            else if (s.op === 'cut')
              for (const conn of [...ps[s.peer].mesh.connections.values()]) conn.link.close('partition');
            else if (s.op === 'heal') connectAll(ps);
            else if (s.op === 'restart') ps[s.peer].stop();
            // A stopped peer comes back at the next wait or heal, with what its stores kept.
            if (s.op === 'wait' || s.op === 'heal') {
              for (const p of ps) if (!p.up) p.start();
              await sleep(s.op === 'wait' ? TIMINGS.delayMs * 3 : 5);
            }
          }
          for (const p of ps) if (!p.up) p.start();
          await sleep(20); // closed links are gone before connecting again
          connectAll(ps);
          await eventually(
            'the same values everywhere, no tombstone left',
            async () => {
              const views = ps.map((p) => JSON.stringify(p.table.all().sort((x, y) => (x.id < y.id ? -1 : 1))));
              return views.every((v) => v === views[0]) && ps.every((p) => p.table.tombstoneStatus().tombstones === 0);
            },
            10_000,
            20,
          );
          for (const p of ps) expect(p.violations).toEqual([]);
        } finally {
          for (const p of ps) if (p.up) p.stop();
          peers.length = 0;
        }
      }),
      {
        numRuns: 12,
        // The case the rule is for: a member away with the value while the others remove it.
        examples: [
          [
            [
              { op: 'put', peer: 1, id: 'a' },
              { op: 'wait' },
              { op: 'restart', peer: 0 },
              { op: 'remove', peer: 1, id: 'a' },
              { op: 'wait' },
              { op: 'wait' },
              { op: 'heal' },
            ],
          ],
        ],
      },
    );
  }, 240_000);
});
