import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parsePeerName, type PeerEntry } from '../../../mesh/index.js';
import { Routes } from '../../../mesh/routes.js';
import { Topology, entryFromWire, entryToWire } from '../../../mesh/topology.js';

const NAMES = Array.from({ length: 6 }, (_, i) => `02:00:00:00:00:0${i}`);

const arbEntry: fc.Arbitrary<PeerEntry> = fc.record({
  name: fc.constantFrom(...NAMES),
  nickname: fc.constantFrom('a', 'b', 'c'),
  uid: fc.constantFrom('0000000000000001', '0000000000000002', 'ffffffffffffffff'),
  version: fc.integer({ min: 1, max: 4 }),
  port: fc.constantFrom(6783, 7000),
  connections: fc.uniqueArray(
    fc.record({
      peer: fc.constantFrom(...NAMES),
      addr: fc.constantFrom('198.18.0.1:6783', '198.18.0.2:40000'),
      outbound: fc.boolean(),
      established: fc.boolean(),
    }),
    { selector: (c) => c.peer, maxLength: 4 },
  ),
});
const arbState = fc.array(arbEntry, { maxLength: 12 });

function merged(...states: PeerEntry[][]): PeerEntry[] {
  const t = new Topology();
  for (const s of states) t.merge(s);
  return t.snapshot();
}

describe('peer names', () => {
  it('parses full and ::-compressed forms to the canonical text', () => {
    expect(parsePeerName('AA:bb:0c:dd:ee:ff')).toBe('aa:bb:0c:dd:ee:ff');
    expect(parsePeerName('::1')).toBe('00:00:00:00:00:01');
    expect(parsePeerName('12::34')).toBe('12:00:00:00:00:34');
    expect(() => parsePeerName('1:2:3')).toThrow(/six hex bytes/);
    expect(() => parsePeerName('zz::1')).toThrow(/invalid peer name/);
  });
});

describe('topology CRDT', () => {
  it('merge is commutative', () => {
    fc.assert(
      fc.property(arbState, arbState, (a, b) => {
        expect(merged(a, b)).toEqual(merged(b, a));
      }),
      { numRuns: 500 },
    );
  });
  it('merge is associative', () => {
    fc.assert(
      fc.property(arbState, arbState, arbState, (a, b, c) => {
        expect(merged(merged(a, b), c)).toEqual(merged(a, merged(b, c)));
      }),
      { numRuns: 500 },
    );
  });
  it('merge is idempotent', () => {
    fc.assert(
      fc.property(arbState, arbState, (a, b) => {
        expect(merged(a, b, b, a)).toEqual(merged(a, b));
      }),
      { numRuns: 500 },
    );
  });
  it('reports exactly the entries that improved the state', () => {
    fc.assert(
      fc.property(arbState, arbState, (a, b) => {
        const t = new Topology();
        t.merge(a);
        const before = new Map(t.snapshot().map((e) => [e.name, JSON.stringify(e)]));
        const improved = t.merge(b);
        const after = t.snapshot();
        const changed = after.filter((e) => before.get(e.name) !== JSON.stringify(e)).map((e) => e.name);
        expect(new Set(improved.map((e) => e.name))).toEqual(new Set(changed));
      }),
    );
  });
  it('round-trips entries through the wire form', () => {
    fc.assert(
      fc.property(arbEntry, (e) => {
        expect(entryFromWire(entryToWire(e))).toEqual(e);
      }),
    );
  });
  it('rejects malformed wire entries with an error, never a crash', () => {
    fc.assert(
      fc.property(fc.anything(), (v) => {
        try {
          entryFromWire(v);
        } catch (err) {
          expect(err).toBeInstanceOf(Error);
        }
      }),
    );
  });
  it('digest comparison finds what each side lacks', () => {
    fc.assert(
      fc.property(arbState, arbState, (a, b) => {
        const ta = new Topology();
        ta.merge(a);
        const tb = new Topology();
        tb.merge(b);
        const { newer } = ta.compare(tb.digest());
        tb.merge(newer);
        // After taking what A said B lacked, B holds everything A holds.
        const ids = (t: Topology) => new Map(t.snapshot().map((e) => [e.name, `${e.version}/${e.uid}`]));
        const ia = ids(ta);
        const ib = ids(tb);
        for (const [name, id] of ia) {
          const other = tb.get(name)!;
          expect(other).toBeDefined();
          expect(`${other.version}/${other.uid}` >= id || other.version > Number(id.split('/')[0])).toBe(true);
        }
        expect(ib.size).toBeGreaterThanOrEqual(ia.size);
      }),
    );
  });
});

/** A consistent topology: a random undirected graph, each edge reported by both ends. */
const arbGraph = fc
  .integer({ min: 2, max: 12 })
  .chain((n) =>
    fc.tuple(
      fc.constant(n),
      fc.uniqueArray(
        fc.tuple(fc.nat(n - 1), fc.nat(n - 1)).filter(([x, y]) => x !== y),
        { selector: ([x, y]) => `${Math.min(x, y)}-${Math.max(x, y)}`, maxLength: 30 },
      ),
    ),
  )
  .map(([n, edges]) => {
    const names = Array.from({ length: n }, (_, i) => `02:00:00:00:01:${i.toString(16).padStart(2, '0')}`);
    const conns = names.map(() => [] as PeerEntry['connections']);
    for (const [x, y] of edges) {
      conns[x].push({ peer: names[y], addr: `198.18.0.${y + 1}:6783`, outbound: true, established: true });
      conns[y].push({ peer: names[x], addr: `198.18.0.${x + 1}:40000`, outbound: false, established: true });
    }
    const entries: PeerEntry[] = names.map((name, i) => ({
      name,
      nickname: `p${i}`,
      uid: '0000000000000001',
      version: 1,
      port: 6783,
      connections: conns[i],
    }));
    return { names, entries };
  });

describe('routes', () => {
  it('every peer computes the same next hops from the same topology, in any merge order', () => {
    fc.assert(
      fc.property(arbGraph, fc.nat(), ({ names, entries }, seed) => {
        const t1 = new Topology();
        t1.merge(entries);
        const shuffled = [...entries].sort(
          (a, b) => ((a.name.charCodeAt(16) * 31 + seed) % 7) - ((b.name.charCodeAt(16) * 31 + seed) % 7),
        );
        const t2 = new Topology();
        t2.merge(shuffled);
        for (const self of names) {
          expect([...new Routes(t1, self).unicast]).toEqual([...new Routes(t2, self).unicast]);
        }
      }),
    );
  });

  it('broadcast trees deliver each broadcast to every reachable peer exactly once', () => {
    fc.assert(
      fc.property(arbGraph, fc.nat(), ({ names, entries }, pick) => {
        const t = new Topology();
        t.merge(entries);
        const src = names[pick % names.length];
        const routes = new Map(names.map((n) => [n, new Routes(t, n)]));
        const received = new Map<string, number>([[src, 1]]);
        const queue = [src];
        while (queue.length > 0) {
          const at = queue.shift()!;
          for (const hop of routes.get(at)!.broadcast(src)) {
            received.set(hop, (received.get(hop) ?? 0) + 1);
            queue.push(hop);
          }
        }
        const reachable = t.reachableFrom(src);
        for (const n of reachable) expect(received.get(n)).toBe(1);
        for (const n of received.keys()) expect(reachable.has(n)).toBe(true);
      }),
    );
  });

  it('uses only connections both ends report as established for data routes', () => {
    const [a, b, c] = ['02:00:00:00:00:0a', '02:00:00:00:00:0b', '02:00:00:00:00:0c'];
    const t = new Topology();
    t.merge([
      {
        name: a,
        nickname: 'a',
        uid: '0000000000000001',
        version: 1,
        port: 6783,
        connections: [
          { peer: b, addr: 'x:1', outbound: true, established: true },
          { peer: c, addr: 'x:2', outbound: true, established: true },
        ],
      },
      {
        name: b,
        nickname: 'b',
        uid: '0000000000000001',
        version: 1,
        port: 6783,
        connections: [
          { peer: a, addr: 'x:3', outbound: false, established: true },
          { peer: c, addr: 'x:4', outbound: true, established: true },
        ],
      },
      // c does not (yet) report its connection to a
      {
        name: c,
        nickname: 'c',
        uid: '0000000000000001',
        version: 1,
        port: 6783,
        connections: [{ peer: b, addr: 'x:5', outbound: false, established: true }],
      },
    ]);
    const r = new Routes(t, a);
    expect(r.unicast.get(c)).toBe(b);
    expect(r.unicastAll.get(c)).toBe(c);
  });
});
