// Any interleaving of allocations, frees, partitions and heals never gives one
// address to two containers, and loses no address: after healing, every peer
// holds the same ring, and every allocation lies in its own peer's ranges.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseCidr } from '../../../net/addr.js';
import { Allocator } from '../../../ipam/allocator.js';
import { Ring, type RingEntry } from '../../../ipam/ring.js';
import { connectInMemory } from '../../../mesh/index.js';
import { eventually, sleep } from '../../harness/cluster.js';
import { testMesh } from '../../harness/memory-mesh.js';

const RANGE = parseCidr('10.40.0.0/26');
const N = 3;

type Cmd =
  | { op: 'alloc'; peer: number; ident: number }
  | { op: 'free'; peer: number; ident: number }
  | { op: 'cut'; peer: number }
  | { op: 'heal' }
  | { op: 'wait' };

const arbCmd: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('alloc' as const), peer: fc.nat(N - 1), ident: fc.nat(9) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('free' as const), peer: fc.nat(N - 1), ident: fc.nat(9) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('cut' as const), peer: fc.nat(N - 1) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('heal' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('wait' as const) }) },
);

const ORIGIN = { start: RANGE.start, end: RANGE.start + 64, seeds: ['02:00:00:00:00:01'] };
const arbRingEntry: fc.Arbitrary<RingEntry> = fc.record({
  token: fc.integer({ min: RANGE.start, max: RANGE.start + 63 }),
  owner: fc.constantFrom('02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03'),
  version: fc.integer({ min: 0, max: 5 }),
  free: fc.integer({ min: 0, max: 64 }),
});
const arbRing = fc.array(arbRingEntry, { maxLength: 10 });
const ringOf = (...parts: RingEntry[][]) => {
  const r = new Ring(ORIGIN);
  for (const p of parts) r.merge(p);
  return r.all();
};

describe('ring CRDT', () => {
  it('merge is commutative, associative and idempotent', () => {
    fc.assert(
      fc.property(arbRing, arbRing, arbRing, (a, b, c) => {
        expect(ringOf(a, b)).toEqual(ringOf(b, a));
        expect(ringOf(ringOf(a, b), c)).toEqual(ringOf(a, ringOf(b, c)));
        expect(ringOf(a, b, a, b)).toEqual(ringOf(a, b));
      }),
      { numRuns: 500 },
    );
  });
  it('a fresh ring divides the whole range among its seeds, each share contiguous', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: 250 }), { minLength: 1, maxLength: 12 }), (ids) => {
        const seeds = ids.map((i) => `02:00:00:00:00:${i.toString(16).padStart(2, '0')}`).sort();
        const ring = Ring.create({ start: RANGE.start, end: RANGE.start + 64, seeds });
        const ranges = ring.ranges();
        expect(ranges[0].start).toBe(RANGE.start);
        expect(ranges.reduce((n, r) => n + (r.end - r.start), 0)).toBe(64);
        expect(new Set(ranges.map((r) => r.entry.owner))).toEqual(new Set(seeds.slice(0, Math.min(seeds.length, 64))));
      }),
    );
  });
});

describe('IPAM under interleavings', () => {
  it('never hands one address to two containers and loses none', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(arbCmd, { minLength: 5, maxLength: 25 }), async (cmds) => {
        const meshes = Array.from({ length: N }, (_, i) => testMesh(`p${i}`));
        const ipam = meshes.map(
          (m) =>
            new Allocator(m, {
              range: RANGE,
              defaultSubnet: RANGE,
              init: { kind: 'consensus', quorum: 2, peers: 2 },
              timeoutMs: 400,
              store: null,
            }),
        );
        const connectAll = () => {
          for (let i = 0; i < N; i++)
            for (let j = i + 1; j < N; j++)
              if (!meshes[i].connections.has(meshes[j].name)) connectInMemory(meshes[i], meshes[j]);
        };
        try {
          connectAll();
          await ipam[0].prime(2000);
          const inflight: Promise<unknown>[] = [];
          for (const c of cmds) {
            if (c.op === 'alloc') inflight.push(ipam[c.peer].allocate(`c${c.peer}-${c.ident}`).catch(() => null));
            else if (c.op === 'free') inflight.push(ipam[c.peer].free(`c${c.peer}-${c.ident}`).catch(() => null));
            else if (c.op === 'cut')
              for (const conn of [...meshes[c.peer].connections.values()]) conn.link.close('partition');
            else if (c.op === 'heal') connectAll();
            else await sleep(30);
          }
          await Promise.all(inflight);
          await sleep(20);
          connectAll();
          await eventually(
            'rings to agree',
            async () => {
              const views = ipam.map((a) => JSON.stringify(a.ring?.all().map((e) => [e.token, e.owner, e.version])));
              return views.every((v) => v === views[0]) && ipam.every((a) => a.ring);
            },
            5000,
            20,
          );
          const seen = new Map<number, string>();
          for (const [i, a] of ipam.entries()) {
            for (const [ident, addrs] of a.owned) {
              for (const addr of addrs) {
                expect(seen.has(addr), `address ${addr} given to ${seen.get(addr)} and ${ident}`).toBe(false);
                seen.set(addr, ident);
                expect(a.ring!.ownerOf(addr)).toBe(meshes[i].name);
              }
            }
          }
        } finally {
          for (const a of ipam) a.stop();
          for (const m of meshes) m.stop();
        }
      }),
      { numRuns: 40 },
    );
  }, 120_000);
});
