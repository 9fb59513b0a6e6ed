// Any interleaving of allocations, frees, partitions and heals never gives one
// address to two containers, and loses no address: after healing, every peer
// holds the same ring, and every allocation lies in its own peer's ranges.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseCidr } from '../../../net/addr.js';
import { Allocator } from '../../../ipam/allocator.js';
import { Ring, entryFromWire, entryToWire, type RingEntry } from '../../../ipam/ring.js';
import { IPV4, IPV6, type CidrOf, type IpFamily, type Position } from '../../../net/family.js';
import { cidr6End, contains6, formatIp6, parseCidr6, parseIp6 } from '../../../net/addr6.js';
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

// The same laws over IPv6's 128 bits: a /48 (2^80 addresses, past what a double holds exactly), with
// tokens near its start, its end and its middle, where a number would have rounded two of them together.
describe('ring CRDT over IPv6', () => {
  const R6 = parseCidr6('fd77:6566:7400::/48');
  const END6 = cidr6End(R6);
  const ORIGIN6 = { start: R6.start, end: END6, seeds: ['02:00:00:00:00:01'] };
  const arbPos = fc.oneof(
    fc.bigInt({ min: 0n, max: 40n }).map((d) => R6.start + d),
    fc.bigInt({ min: 1n, max: 40n }).map((d) => END6 - d),
    fc.bigInt({ min: 0n, max: 40n }).map((d) => R6.start + (1n << 79n) + d),
    fc.bigInt({ min: R6.start, max: END6 - 1n }),
  );
  const arbEntry6: fc.Arbitrary<RingEntry<bigint>> = fc.record({
    token: arbPos,
    owner: fc.constantFrom('02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03'),
    version: fc.integer({ min: 0, max: 5 }),
    free: fc.oneof(fc.bigInt({ min: 0n, max: 3n }), fc.bigInt({ min: (1n << 80n) - 3n, max: 1n << 80n })),
  });
  const arbRing6 = fc.array(arbEntry6, { maxLength: 10 });
  const ringOf6 = (...parts: RingEntry<bigint>[][]) => {
    const r = new Ring(ORIGIN6);
    for (const p of parts) r.merge(p);
    return r.all();
  };

  it('merge is commutative, associative and idempotent; positions past 2^53 stay apart', () => {
    fc.assert(
      fc.property(arbRing6, arbRing6, arbRing6, (a, b, c) => {
        expect(ringOf6(a, b)).toEqual(ringOf6(b, a));
        expect(ringOf6(ringOf6(a, b), c)).toEqual(ringOf6(a, ringOf6(b, c)));
        expect(ringOf6(a, b, a, b)).toEqual(ringOf6(a, b));
        expect(ringOf6(a).length).toBe(new Set(a.map((e) => e.token)).size);
      }),
      { numRuns: 500 },
    );
  });

  it('a fresh ring divides all 2^80 addresses among its seeds, each share contiguous', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: 250 }), { minLength: 1, maxLength: 12 }), (ids) => {
        const seeds = ids.map((i) => `02:00:00:00:00:${i.toString(16).padStart(2, '0')}`).sort();
        const ring = Ring.create({ start: R6.start, end: END6, seeds });
        const ranges = ring.ranges();
        expect(ranges[0].start).toBe(R6.start);
        expect(ranges.reduce((n, r) => n + (r.end - r.start), 0n)).toBe(1n << 80n);
        expect(ranges.map((r) => r.entry.owner)).toEqual(seeds); // one range each, in order
        const shares = ring.shares();
        expect([...shares.values()].reduce((n, s) => n + s.size, 0n)).toBe(1n << 80n);
      }),
    );
  });

  it('grant and transfer keep the ring whole; entries cross the wire unchanged, and only as their own family', () => {
    const [a, b] = ['02:00:00:00:00:01', '02:00:00:00:00:02'];
    fc.assert(
      fc.property(fc.bigInt({ min: 1n, max: (1n << 80n) - 2n }), fc.bigInt({ min: 1n, max: 1000n }), (off, len) => {
        const ring = Ring.create({ start: R6.start, end: END6, seeds: [a] });
        const start = R6.start + off;
        const end = start + len > END6 ? END6 : start + len;
        ring.grant(a, start, end, b);
        expect(ring.ownerOf(start)).toBe(b);
        expect(ring.ownerOf(end - 1n)).toBe(b);
        expect(ring.ownerOf(start - 1n)).toBe(a);
        if (end < END6) expect(ring.ownerOf(end)).toBe(a);
        expect(ring.ranges().reduce((n, r) => n + (r.end - r.start), 0n)).toBe(1n << 80n);
        const copy = new Ring(ORIGIN6);
        copy.merge(ring.all().map((e) => entryFromWire(JSON.parse(JSON.stringify(entryToWire(e, IPV6))), IPV6)));
        expect(copy.all()).toEqual(ring.all());
        ring.transfer(b, a);
        expect(new Set(ring.all().map((e) => e.owner))).toEqual(new Set([a]));
      }),
    );
    const e = { token: R6.start, owner: a, version: 1, free: 5n };
    expect(() => entryFromWire(entryToWire(e, IPV6))).toThrow(/invalid numbers/); // IPv6 read as IPv4
    expect(() => entryFromWire([5, a, 1, 5], IPV6)).toThrow(/invalid numbers/); // a number is not IPv6
    for (const bad of ['-1', '01', '1e5', ((1n << 128n) + 1n).toString(), 'x'.repeat(50)])
      expect(() => entryFromWire([bad, a, 1, '0'], IPV6), bad).toThrow(/invalid numbers/);
    expect(() => entryFromWire([2 ** 32 + 1, a, 1, 0])).toThrow(/invalid numbers/);
  });
});

// The same run over each family: IPv4, and IPv6 in a block whose addresses are far past 2^53.
const FAMILIES = [
  { name: 'IPv4', family: IPV4 as IpFamily<Position>, range: parseCidr('10.40.0.0/26') as CidrOf<Position> },
  { name: 'IPv6', family: IPV6 as IpFamily<Position>, range: parseCidr6('fd77:6566:7400::/122') as CidrOf<Position> },
];

describe('IPAM under interleavings', () => {
  it.each(FAMILIES)(
    '$name: never hands one address to two containers and loses none',
    async ({ family, range }) => {
      await fc.assert(
        fc.asyncProperty(fc.array(arbCmd, { minLength: 5, maxLength: 25 }), async (cmds) => {
          const meshes = Array.from({ length: N }, (_, i) => testMesh(`p${i}`));
          const ipam = meshes.map(
            (m) =>
              new Allocator<Position>(m, {
                family,
                range,
                defaultSubnet: range,
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
                const views = ipam.map((a) =>
                  JSON.stringify(a.ring?.all().map((e) => [String(e.token), e.owner, e.version])),
                );
                return views.every((v) => v === views[0]) && ipam.every((a) => a.ring);
              },
              5000,
              20,
            );
            const seen = new Map<Position, string>();
            for (const [i, a] of ipam.entries()) {
              for (const [ident, addrs] of a.owned) {
                for (const addr of addrs) {
                  expect(
                    seen.has(addr),
                    `address ${family.formatIp(addr)} given to ${seen.get(addr)} and ${ident}`,
                  ).toBe(false);
                  seen.set(addr, ident);
                  expect(family.contains(range, { start: addr, prefix: family.bits })).toBe(true);
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
    },
    120_000,
  );

  it('IPv6 at full size: peers without space in a /64 of a /48 get half of an aligned free block from its owner', async () => {
    const range = parseCidr6('fd77:6566:7400::/48');
    const subnet = parseCidr6('fd77:6566:7400:5::/64');
    const meshes = Array.from({ length: 3 }, (_, i) => testMesh(`p${i}`));
    const seeds = meshes.map((m) => m.name).sort();
    const ipam = meshes.map(
      (m) =>
        new Allocator<bigint>(m, {
          family: IPV6,
          channel: 'ipam6',
          range,
          defaultSubnet: subnet,
          init: { kind: 'seed', seeds },
          timeoutMs: 2000,
          store: null,
        }),
    );
    try {
      for (let i = 0; i < 3; i++) for (let j = i + 1; j < 3; j++) connectInMemory(meshes[i], meshes[j]);
      const got: bigint[] = [];
      // In turn, so each asks for space once the one before has it.
      for (const [i, a] of ipam.entries()) for (let k = 0; k < 3; k++) got.push((await a.allocate(`c${i}-${k}`)).addr);
      expect(new Set(got).size).toBe(9);
      for (const addr of got) expect(contains6(subnet, { start: addr, prefix: 128 })).toBe(true);
      // The /64's owner hands out its lowest addresses; the others' come from halves of aligned free
      // blocks of 2^63 or 2^62 addresses, given away from the top.
      const owner = seeds[0]; // the first half of the /48 (recursive halving)
      for (const [i, a] of ipam.entries()) {
        const mine = [...a.owned.values()].flat().sort((x, y) => (x < y ? -1 : 1));
        if (meshes[i].name === owner)
          expect(mine.map(formatIp6)).toEqual(['1', '2', '3'].map((n) => `fd77:6566:7400:5::${n}`));
        else for (const addr of mine) expect(addr >= parseIp6('fd77:6566:7400:5:4000::')).toBe(true);
      }
      const status = ipam[1].status();
      expect(status.range).toBe('fd77:6566:7400::/48');
      expect(status.totalAddresses).toBe(2 ** 80);
      expect(status.owned[0].addresses[0]).toMatch(/^fd77:6566:7400:5:/);
      await eventually('rings to agree', async () => {
        const views = ipam.map((a) => JSON.stringify(a.ring!.all().map((e) => [String(e.token), e.owner, e.version])));
        return views.every((v) => v === views[0]);
      });
      const sizes = [...ipam[0].ring!.shares().values()].reduce((n, x) => n + x.size, 0n);
      expect(sizes).toBe(1n << 80n);
    } finally {
      for (const a of ipam) a.stop();
      for (const m of meshes) m.stop();
    }
  });
});
