// Mesh scale: the real mesh code over in-memory links, N peers joining a sparse
// random graph at once. Measures the time until every peer holds every other
// peer's current entry, the gossip bytes and messages each peer sent, and heap
// per peer; one change after that; then churn: rounds in which some peers leave
// (their routers stop) and as many new ones join, until every live peer holds
// exactly the live peers. Then the same with full-state gossip (Weave's method,
// the anchor), and prints the ratios.
//
//   npm run build && node --expose-gc dist/bench/mesh-scale.js [--sizes 100,300,1000] [--seed 1] [--modes delta,full] [--churn-rounds 3] [--churn-fraction 0.05]
import { Mesh, defaultMeshTimings, connectInMemory } from '../mesh/index.js';
import { silentLogger } from '../lib/logger.js';
import { seededRandom } from '../test/harness/random.js';
import { numberArg, stringArg } from './args.js';

interface Result {
  peers: number;
  mode: 'delta' | 'full';
  edges: number;
  convergeMs: number;
  bytesPerPeer: number;
  messagesPerPeer: number;
  heapPerPeerKB: number;
  cpuPerPeerMs: number;
  converged: boolean;
  /** After convergence: one new connection between two peers, until everyone has both changed entries. */
  changeMs: number;
  changeBytesPerPeer: number;
  /** Churn rounds: median time until the live peers agree again, and bytes each live peer sent meanwhile. */
  churnMs: number;
  churnBytesPerPeer: number;
  churnConverged: boolean;
  /** Heap per live peer after the churn. */
  churnHeapPerPeerKB: number;
}

/** Edges of a connected random graph with degree about 5-10: a random spanning tree plus random extra edges. */
function graph(n: number, seed: number): [number, number][] {
  const rnd = seededRandom(seed);
  const edges = new Set<string>();
  const out: [number, number][] = [];
  const add = (a: number, b: number) => {
    if (a === b) return;
    const k = a < b ? `${a}-${b}` : `${b}-${a}`;
    if (edges.has(k)) return;
    edges.add(k);
    out.push([a, b]);
  };
  for (let i = 1; i < n; i++) add(i, Math.floor(rnd() * i));
  const target = Math.round(n * 3.5); // mean degree about 7
  while (out.length < target) add(Math.floor(rnd() * n), Math.floor(rnd() * n));
  return out;
}

function name(i: number): string {
  const h = (i + 0x020000000000).toString(16).padStart(12, '0');
  return h.match(/../g)!.join(':');
}

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

function newMesh(i: number, mode: 'delta' | 'full'): Mesh {
  return new Mesh({
    name: name(i),
    nickname: `p${i}`,
    uid: (i + 1).toString(16).padStart(16, '0'),
    port: 6783,
    connLimit: 0,
    ...defaultMeshTimings,
    // All peers share one thread here, so delivery can lag by seconds: liveness timers would only add churn.
    heartbeatInterval: 3_600_000,
    fullStateGossip: mode === 'full',
    log: silentLogger,
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Churn on a converged mesh: each round, k random peers leave (stopped: their neighbours see the
 * connections close) and k new peers join, each connected to 3 random live peers; the round ends when
 * every live peer holds exactly the live peers, at their current versions (the gone ones dropped as
 * unreachable). Returns the median round's time and bytes per live peer.
 */
async function churn(
  meshes: Mesh[],
  mode: 'delta' | 'full',
  rounds: number,
  fraction: number,
  seed: number,
  timeoutMs: number,
): Promise<{ ms: number; bytesPerPeer: number; converged: boolean }> {
  const rnd = seededRandom(seed + 7);
  const k = Math.max(1, Math.round(meshes.length * fraction));
  let next = meshes.length;
  const live = [...meshes];
  const times: number[] = [];
  const bytes: number[] = [];
  let converged = true;
  for (let r = 0; r < rounds; r++) {
    const sent0 = live.reduce((b, m) => b + m.stats.bytesSent, 0);
    const t0 = performance.now();
    let goneSent = 0;
    for (let j = 0; j < k; j++) {
      const [gone] = live.splice(Math.floor(rnd() * live.length), 1);
      goneSent += gone.stats.bytesSent;
      gone.stop();
    }
    const joined: Mesh[] = [];
    for (let j = 0; j < k; j++) {
      const m = newMesh(next++, mode);
      for (let c = 0; c < 3; c++) connectInMemory(m, live[Math.floor(rnd() * live.length)]);
      joined.push(m);
    }
    live.push(...joined);
    const agreed = () =>
      live.every((m) => {
        if (m.topology.entries.size !== live.length) return false;
        for (const other of live) if (m.topology.get(other.name)?.version !== other.ownEntry.version) return false;
        return true;
      });
    let ok = false;
    while (performance.now() - t0 < timeoutMs) {
      await new Promise((res) => setTimeout(res, 25));
      if ((ok = agreed())) break;
    }
    converged &&= ok;
    times.push(performance.now() - t0);
    await new Promise((res) => setTimeout(res, 500));
    // Bytes of the round: what the peers live at its end sent meanwhile (sent0 counted the gone ones, the new ones started at 0).
    bytes.push((live.reduce((b, m) => b + m.stats.bytesSent, 0) - sent0 + goneSent) / live.length);
  }
  meshes.splice(0, meshes.length, ...live);
  return { ms: median(times), bytesPerPeer: median(bytes), converged };
}

async function run(
  n: number,
  mode: 'delta' | 'full',
  seed: number,
  timeoutMs: number,
  churnRounds: number,
  churnFraction: number,
): Promise<Result> {
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const meshes = Array.from({ length: n }, (_, i) => newMesh(i, mode));
  const edges = graph(n, seed);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (const [a, b] of edges) connectInMemory(meshes[a], meshes[b]);
  const allHold = (names: Mesh[]) =>
    meshes.every((m) => {
      if (m.topology.entries.size !== n) return false;
      for (const other of names) {
        const e = m.topology.get(other.name);
        if (!e || e.version !== other.ownEntry.version) return false;
      }
      return true;
    });
  let converged = false;
  while (performance.now() - t0 < timeoutMs) {
    await new Promise((r) => setTimeout(r, 25));
    converged = allHold(meshes);
    if (converged) break;
  }
  const convergeMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  // Let stragglers (Ready messages, last flushes) settle, then measure one change on its own.
  await new Promise((r) => setTimeout(r, 500));
  let changeMs = NaN;
  let changeBytesPerPeer = NaN;
  if (converged) {
    const sent0 = meshes.reduce((b, m) => b + m.stats.bytesSent, 0);
    const a = 0;
    let b = 1;
    while (meshes[a].connections.has(meshes[b].name)) b++;
    const t1 = performance.now();
    connectInMemory(meshes[a], meshes[b]);
    await new Promise((r) => setTimeout(r, 5));
    while (performance.now() - t1 < timeoutMs && !allHold([meshes[a], meshes[b]]))
      await new Promise((r) => setTimeout(r, 5));
    changeMs = performance.now() - t1;
    await new Promise((r) => setTimeout(r, 500));
    changeBytesPerPeer = (meshes.reduce((s2, m) => s2 + m.stats.bytesSent, 0) - sent0) / n;
  }
  const cpuPerPeerMs = (cpu.user + cpu.system) / 1000 / n;
  gc();
  const heapPerPeerKB = (process.memoryUsage().heapUsed - heapBefore) / n / 1024;
  let bytes = 0;
  let messages = 0;
  for (const m of meshes) {
    bytes += m.stats.bytesSent;
    messages += m.stats.messagesSent;
  }
  const ch =
    converged && churnRounds > 0
      ? await churn(meshes, mode, churnRounds, churnFraction, seed, timeoutMs)
      : { ms: NaN, bytesPerPeer: NaN, converged: false };
  gc();
  const churnHeapPerPeerKB = (process.memoryUsage().heapUsed - heapBefore) / meshes.length / 1024;
  for (const m of meshes) m.stop();
  await new Promise((r) => setTimeout(r, 50));
  return {
    peers: n,
    mode,
    edges: edges.length,
    convergeMs,
    bytesPerPeer: bytes / n,
    messagesPerPeer: messages / n,
    heapPerPeerKB,
    cpuPerPeerMs,
    converged,
    changeMs,
    changeBytesPerPeer,
    churnMs: ch.ms,
    churnBytesPerPeer: ch.bytesPerPeer,
    churnConverged: ch.converged,
    churnHeapPerPeerKB,
  };
}

function fmtBytes(b: number): string {
  return b > 1024 * 1024 ? `${(b / 1024 / 1024).toFixed(2)} MiB` : `${(b / 1024).toFixed(1)} KiB`;
}

async function main(): Promise<void> {
  const sizes = stringArg('sizes', '100,300,1000').split(',').map(Number);
  const seed = numberArg('seed', 1);
  const timeoutMs = numberArg('timeout', 300) * 1000;
  console.log(
    `mesh-scale: in-memory links, random graph (mean degree ~7), seed ${seed}, gossip delay ${defaultMeshTimings.gossipDelay} ms`,
  );
  console.log(
    'All peers share this one thread, so wall time grows with N x CPU per peer; CPU per peer is what one real host would spend.',
  );
  console.log(
    'Join: all edges at once, until every peer holds every entry. Change: then one new connection, until all hold it.',
  );
  const churnRounds = numberArg('churn-rounds', 3);
  const churnFraction = numberArg('churn-fraction', 0.05);
  console.log(
    `Churn: ${churnRounds} rounds, each ${(churnFraction * 100).toFixed(0)}% of the peers leave and as many join (3 links each), until the live peers agree; medians.`,
  );
  console.log(
    'peers  mode   edges  join time   cpu/peer   bytes sent/peer  msgs/peer  heap/peer  change time  change bytes/peer  churn round  churn bytes/peer  heap/peer after',
  );
  const rows: Result[] = [];
  const modes = stringArg('modes', 'delta,full').split(',') as ('delta' | 'full')[];
  for (const n of sizes) {
    for (const mode of modes) {
      const r = await run(n, mode, seed, timeoutMs, churnRounds, churnFraction);
      rows.push(r);
      console.log(
        `${String(n).padStart(5)}  ${mode.padEnd(5)}  ${String(r.edges).padStart(5)}  ${(r.converged ? `${(r.convergeMs / 1000).toFixed(2)} s` : 'TIMEOUT').padStart(9)}  ${r.cpuPerPeerMs.toFixed(1).padStart(6)} ms  ${fmtBytes(r.bytesPerPeer).padStart(15)}  ${r.messagesPerPeer.toFixed(0).padStart(9)}  ${r.heapPerPeerKB.toFixed(0).padStart(6)} KiB  ${`${r.changeMs.toFixed(0)} ms`.padStart(11)}  ${fmtBytes(r.changeBytesPerPeer).padStart(17)}  ${(r.churnConverged ? `${r.churnMs.toFixed(0)} ms` : 'TIMEOUT').padStart(11)}  ${fmtBytes(r.churnBytesPerPeer).padStart(16)}  ${r.churnHeapPerPeerKB.toFixed(0).padStart(11)} KiB`,
      );
    }
    const d = rows.find((r) => r.peers === n && r.mode === 'delta');
    const f = rows.find((r) => r.peers === n && r.mode === 'full');
    if (!d || !f) continue;
    console.log(
      `       ratio delta/full: time ${(d.convergeMs / f.convergeMs).toFixed(3)}, cpu ${(d.cpuPerPeerMs / f.cpuPerPeerMs).toFixed(3)}, bytes ${(d.bytesPerPeer / f.bytesPerPeer).toFixed(4)}, messages ${(d.messagesPerPeer / f.messagesPerPeer).toFixed(3)}; one change: time ${(d.changeMs / f.changeMs).toFixed(3)}, bytes ${(d.changeBytesPerPeer / f.changeBytesPerPeer).toFixed(4)}; churn round: time ${(d.churnMs / f.churnMs).toFixed(3)}, bytes ${(d.churnBytesPerPeer / f.churnBytesPerPeer).toFixed(4)}${d.converged && f.converged ? '' : ' (a run timed out: its time is a lower bound)'}`,
    );
  }
}

await main();
