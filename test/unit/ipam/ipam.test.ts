import { afterEach, describe, expect, it } from 'vitest';
import { parseCidr, parseIp, formatIp } from '../../../net/addr.js';
import { Allocator, type InitMode } from '../../../ipam/allocator.js';
import { connectInMemory, pack, unpack, type Mesh } from '../../../mesh/index.js';
import { eventually } from '../../harness/cluster.js';
import { testMesh } from '../../harness/memory-mesh.js';

const RANGE = parseCidr('10.32.0.0/24');
let meshes: Mesh[] = [];
let allocators: Allocator[] = [];
afterEach(() => {
  for (const a of allocators) a.stop();
  for (const m of meshes) m.stop();
  meshes = [];
  allocators = [];
});

function peers(
  n: number,
  init: (i: number) => InitMode = () => ({ kind: 'consensus', quorum: Math.floor(n / 2) + 1, peers: n - 1 }),
  timeoutMs = 5000,
): { meshes: Mesh[]; ipam: Allocator[] } {
  const ms = Array.from({ length: n }, (_, i) => testMesh(`p${i}`));
  const as = ms.map(
    (m, i) => new Allocator(m, { range: RANGE, defaultSubnet: RANGE, init: init(i), timeoutMs, store: null }),
  );
  meshes.push(...ms);
  allocators.push(...as);
  return { meshes: ms, ipam: as };
}

describe('IPAM over in-memory meshes', () => {
  it('reaches consensus lazily and allocates distinct lowest-first addresses on every peer', async () => {
    const { meshes: ms, ipam } = peers(3);
    connectInMemory(ms[0], ms[1]);
    connectInMemory(ms[1], ms[2]);
    await eventually('mesh', async () => ms.every((m) => m.topology.entries.size === 3), 2000, 10);
    expect(ipam[0].status().state).toMatch(/^idle/);
    const got = await Promise.all(
      ipam.flatMap((a, i) => Array.from({ length: 20 }, (_, k) => a.allocate(`c${i}-${k}`))),
    );
    const addrs = got.map((g) => g.addr);
    expect(new Set(addrs).size).toBe(60);
    for (const a of addrs) expect(a >= RANGE.start + 1 && a < RANGE.start + 255).toBe(true);
    // Within each peer's own space, lowest first: the first allocation on a peer is the lowest address it owns.
    for (const [i, a] of ipam.entries()) {
      const mine = a.lookup(`c${i}-0`)[0];
      const own = a.ring!.rangesOf(ms[i].name).map((r) => Math.max(r.start, RANGE.start + 1));
      expect(mine).toBe(Math.min(...own));
    }
    // The agreed value names at least a quorum; a peer left out gets space by asking.
    expect(ipam[0].ring!.origin.seeds.length).toBeGreaterThanOrEqual(2);
  });

  it('elects over a chain when only the far end asks (answers travel back to the proposer)', async () => {
    const { meshes: ms, ipam } = peers(3);
    connectInMemory(ms[0], ms[1]);
    connectInMemory(ms[1], ms[2]);
    await eventually('mesh', async () => ms.every((m) => m.topology.entries.size === 3), 2000, 10);
    const r = await ipam[2].allocate('only');
    expect(ipam[2].ring!.ownerOf(r.addr)).toBe(ms[2].name);
  });

  it('asks other peers for space when its own runs out', async () => {
    const { meshes: ms, ipam } = peers(2, (i) =>
      i === 0 ? { kind: 'consensus', quorum: 1, peers: 0 } : { kind: 'observer' },
    );
    // p0 alone forms the ring (quorum 1) and owns everything; p1 joins afterwards as an observer.
    await ipam[0].prime();
    connectInMemory(ms[0], ms[1]);
    const r = await ipam[1].allocate('late');
    expect(ipam[1].ring!.ownerOf(r.addr)).toBe(ms[1].name);
    expect(ipam[0].lookup('late')).toEqual([]);
    const again = await ipam[0].allocate('first');
    expect(again.addr).not.toBe(r.addr);
  });

  it('fails after the bounded wait, naming what is missing, when the quorum cannot be reached', async () => {
    const { ipam } = peers(1, () => ({ kind: 'consensus', quorum: 2, peers: 2 }), 1500);
    const t0 = Date.now();
    const err = await ipam[0].allocate('c1').catch((e: Error) => e);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(String(err)).toMatch(/awaiting consensus: heard from 1 of the 2 peers needed/);
    expect(String(err)).toMatch(/only 1 peer\(s\) in the mesh/);
  });

  it('reports two separately started rings clearly, keeps its own and the connection', async () => {
    const { meshes: ms, ipam } = peers(2, () => ({ kind: 'consensus', quorum: 1, peers: 0 }));
    const a0 = await ipam[0].allocate('x');
    const a1 = await ipam[1].allocate('y');
    connectInMemory(ms[0], ms[1]);
    await eventually(
      'conflict reported',
      async () => ipam[0].status().conflicts.length > 0 && ipam[1].status().conflicts.length > 0,
      3000,
      20,
    );
    expect(ipam[0].status().conflicts[0]).toMatch(/started IPAM separately.*weft reset/);
    expect(ms[0].connections.has(ms[1].name)).toBe(true);
    expect(ipam[0].lookup('x')).toEqual([a0.addr]);
    expect(ipam[1].lookup('y')).toEqual([a1.addr]);
  });

  it('a peer asking for an address past the end of the ring is denied; the ring is left whole', async () => {
    const owner = testMesh('owner');
    const attacker = testMesh('attacker');
    meshes.push(owner, attacker);
    const a = new Allocator(owner, {
      range: RANGE,
      defaultSubnet: RANGE,
      init: { kind: 'seed', seeds: [owner.name] },
      timeoutMs: 2000,
      store: null,
    });
    allocators.push(a);
    const answers: { t: string; why?: string }[] = [];
    const raw = attacker.registerChannel('ipam', {
      gossip: () => null,
      onGossip: () => null,
      onUnicast: (_src, payload) => answers.push(unpack(payload) as { t: string; why?: string }),
    });
    connectInMemory(owner, attacker);
    await eventually('connected', async () => attacker.routes.unicastAll.has(owner.name), 2000, 10);
    const before = JSON.stringify(a.ring!.all());
    for (const [id, past] of [
      [1, RANGE.start + 256],
      [2, RANGE.start + 100_000],
      [3, RANGE.start - 1],
    ])
      raw.unicast(owner.name, pack({ t: 'req', id, s: RANGE.start, p: 24, a: past }));
    await eventually('three answers', async () => answers.length === 3, 2000, 10);
    expect(answers.map((x) => x.t)).toEqual(['deny', 'deny', 'deny']);
    expect(answers[0].why).toMatch(/is not in the ring's range/);
    expect(JSON.stringify(a.ring!.all())).toBe(before);
    expect(a.status().peers.map((p) => p.addresses)).toEqual([256]);
  });

  it('says a full range is full at once', async () => {
    const small = parseCidr('10.32.0.0/30');
    const [m] = [testMesh('solo')];
    meshes.push(m);
    const a = new Allocator(m, {
      range: small,
      defaultSubnet: small,
      init: { kind: 'consensus', quorum: 1, peers: 0 },
      timeoutMs: 5000,
      store: null,
    });
    allocators.push(a);
    await a.allocate('x');
    await a.allocate('y');
    const err = await a.allocate('z').catch((e: Error) => e);
    expect(String(err)).toMatch(/10\.32\.0\.0\/30 is full/);
  });

  it('frees the addresses of containers that are gone (pid:N, netns:NAME), and only those', async () => {
    const m = testMesh('solo');
    meshes.push(m);
    const alive = new Set(['pid:1', 'netns:web']);
    const a = new Allocator(m, {
      range: RANGE,
      defaultSubnet: RANGE,
      init: { kind: 'consensus', quorum: 1, peers: 0 },
      timeoutMs: 5000,
      store: null,
      liveness: (id) => (id.startsWith('pid:') || id.startsWith('netns:') ? alive.has(id) : null),
    });
    allocators.push(a);
    for (const id of ['pid:1', 'pid:999', 'netns:web', 'netns:gone', 'docker-abc']) await a.allocate(id);
    expect((await a.pruneGone()).sort()).toEqual(['netns:gone', 'pid:999']);
    expect(a.lookup('pid:999')).toEqual([]);
    expect(a.lookup('docker-abc')).toHaveLength(1);
    expect(a.lookup('netns:web')).toHaveLength(1);
    // The freed address is handed out again (lowest first).
    const again = await a.allocate('pid:2');
    expect(again.addr).toBe(RANGE.start + 2);
  });

  it('claims, looks up and frees', async () => {
    const { ipam } = peers(1, () => ({ kind: 'consensus', quorum: 1, peers: 0 }));
    const c = await ipam[0].claim('web', RANGE.start + 7, RANGE);
    expect(formatIp(c.addr)).toBe('10.32.0.7');
    await expect(ipam[0].claim('db', RANGE.start + 7, RANGE)).rejects.toThrow(/already allocated to web/);
    expect((await ipam[0].allocate('db')).addr).toBe(RANGE.start + 1);
    await ipam[0].free('web');
    await expect(ipam[0].free('web')).rejects.toThrow(/no addresses for web/);
    expect((await ipam[0].claim('db2', RANGE.start + 7, RANGE)).addr).toBe(RANGE.start + 7);
    // Outside the range: recorded as claimed, and then nobody else here may claim it (the API fuzz found two could).
    const outside = parseIp('10.99.0.1');
    const net = { start: parseIp('10.96.0.0'), prefix: 12 };
    expect((await ipam[0].claim('ext1', outside, net)).addr).toBe(outside);
    await expect(ipam[0].claim('ext2', outside, net)).rejects.toThrow(/10\.99\.0\.1 is already claimed by ext1/);
    expect((await ipam[0].claim('ext1', outside, net)).addr).toBe(outside);
    await ipam[0].free('ext1');
    expect((await ipam[0].claim('ext2', outside, net)).addr).toBe(outside);
  });

  it("rmpeer takes over a dead peer's space and refuses a live one", async () => {
    const { meshes: ms, ipam } = peers(3);
    connectInMemory(ms[0], ms[1]);
    connectInMemory(ms[1], ms[2]);
    await Promise.all(ipam.map((a, i) => a.allocate(`c${i}`)));
    // p2 may have got its space from a donor after the election: wait until p0 knows.
    await eventually('p0 to see p2 own space', async () => ipam[0].ring!.rangesOf(ms[2].name).length > 0, 3000, 20);
    await expect(ipam[0].rmpeer(ms[2].name)).rejects.toThrow(/is alive/);
    ipam[2].stop();
    ms[2].stop();
    await eventually('p2 gone', async () => !ms[0].routes.unicastAll.has(ms[2].name), 3000, 20);
    const r = await ipam[0].rmpeer('p2');
    expect(r.peer).toBe(ms[2].name);
    expect(r.addresses).toBeGreaterThan(0);
    await eventually('p1 sees p0 own it', async () => ipam[1].ring!.rangesOf(ms[2].name).length === 0, 3000, 20);
  });
});
