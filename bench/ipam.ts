// IPAM: allocation latency from local space and when space must first be
// requested from another peer, and the time from a cold start of three peers to
// the first allocation with consensus and with a seed. Real allocator, mesh and
// lmdb store; peers joined by in-memory links with the router's default timings.
// Ratios are against the local allocation (latency) and against seed (cold start).
//
//   npm run build && node dist/bench/ipam.js [--n 2000]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCidr, type Cidr } from '../net/addr.js';
import { Allocator, type InitMode } from '../ipam/allocator.js';
import { IpamStore } from '../ipam/store.js';
import { newUid } from '../router/identity.js';
import { connectInMemory, Mesh, defaultMeshTimings, randomPeerName } from '../mesh/index.js';
import { silentLogger } from '../lib/logger.js';

const RANGE = parseCidr('10.32.0.0/12');
const dirs: string[] = [];

function peer(init: InitMode, name = randomPeerName(), range: Cidr = RANGE): { mesh: Mesh; ipam: Allocator } {
  const mesh = new Mesh({
    name,
    nickname: name,
    uid: newUid(),
    port: 6783,
    connLimit: 0,
    ...defaultMeshTimings,
    fullStateGossip: false,
    log: silentLogger,
  });
  const dir = mkdtempSync(join(tmpdir(), 'weft-bench-ipam-'));
  dirs.push(dir);
  const ipam = new Allocator(mesh, {
    range,
    defaultSubnet: range,
    init,
    timeoutMs: 30_000,
    store: new IpamStore(dir, range, name),
  });
  return { mesh, ipam };
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function timeEach(n: number, fn: (i: number) => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await fn(i);
    out.push(performance.now() - t);
  }
  return out;
}

async function coldStart(init: (names: string[], i: number) => InitMode): Promise<number> {
  const names = [randomPeerName(), randomPeerName(), randomPeerName()];
  const t0 = performance.now();
  const ps = names.map((n, i) => peer(init(names, i), n));
  connectInMemory(ps[0].mesh, ps[1].mesh);
  connectInMemory(ps[1].mesh, ps[2].mesh);
  await ps[2].ipam.allocate('first');
  const ms = performance.now() - t0;
  for (const p of ps) {
    p.ipam.stop();
    p.mesh.stop();
  }
  return ms;
}

async function main(): Promise<void> {
  // The mesh's timers do not hold the process open (a router has its HTTP server for that): this one does.
  const keepAlive = setInterval(() => undefined, 1000);
  const i = process.argv.indexOf('--n');
  const n = i > 0 ? Number(process.argv[i + 1]) : 2000;
  console.log(
    `ipam: ${n} sequential allocations each; lmdb store in a temp dir; in-memory links, gossip delay ${defaultMeshTimings.gossipDelay} ms`,
  );

  // Local: one peer that owns the whole range (quorum 1).
  const solo = peer({ kind: 'consensus', quorum: 1, peers: 0 });
  await solo.ipam.prime();
  const local = await timeEach(n, (k) => solo.ipam.allocate(`local-${k}`));

  // Remote: a second peer with no space; each allocation in a fresh /30 it does not own asks the first for space.
  const other = peer({ kind: 'observer' });
  connectInMemory(solo.mesh, other.mesh);
  await other.ipam.prime();
  const remoteN = Math.min(n, 200);
  const remote = await timeEach(remoteN, (k) => {
    const base = 0x0a280000 + k * 4; // 10.40.0.0 + 4k: far from the local allocations
    return other.ipam.allocate(`remote-${k}`, { start: base, prefix: 30 });
  });
  for (const p of [solo, other]) {
    p.ipam.stop();
    p.mesh.stop();
  }

  const consensus = await coldStart(() => ({ kind: 'consensus', quorum: 2, peers: 2 }));
  const seed = await coldStart((names) => ({ kind: 'seed', seeds: names }));

  const row = (label: string, xs: number[], anchor: number) =>
    console.log(
      `${label.padEnd(34)} p50 ${pct(xs, 50).toFixed(3).padStart(8)} ms  p99 ${pct(xs, 99).toFixed(3).padStart(8)} ms   p50 ratio ${(pct(xs, 50) / anchor).toFixed(1)}`,
    );
  const anchor = pct(local, 50);
  row('allocate from local space', local, anchor);
  row(`allocate after asking a peer (${remoteN})`, remote, anchor);
  console.log(
    `${'cold start to first allocation'.padEnd(34)} consensus ${consensus.toFixed(0)} ms, seed ${seed.toFixed(0)} ms, ratio consensus/seed ${(consensus / seed).toFixed(2)}`,
  );
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  clearInterval(keepAlive);
}

await main();
