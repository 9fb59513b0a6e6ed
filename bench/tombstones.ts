// What removed rules cost and when they go: two routers in this process on loopback (no namespaces,
// no root), N rules added on one, then removed on the other. Printed: policy.json's size with the
// rules (the anchor), right after their removal (what every router kept for ever before tombstones
// were collected), and once they are collected; the time from the removal to the collection on both
// routers (the rule: held everywhere for two gossip intervals, checked every interval); each router's
// heap after a forced collection at those three points.
//
//   npm run build && node --expose-gc dist/bench/tombstones.js [--rules 2000] [--gossip 1000]
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../lib/logger.js';
import { Router } from '../router/router.js';
import { ruleFromRequest } from '../policy/rules.js';
import { PolicyTable } from '../policy/table.js';
import { eventually } from '../test/harness/cluster.js';
import { freePorts } from '../test/harness/ports.js';
import { routerOptions } from '../test/harness/router-options.js';
import { numberArg } from './args.js';

const RULES = numberArg('rules', 2000);
const GOSSIP_MS = numberArg('gossip', 1000);

const kib = (dir: string) => statSync(join(dir, 'policy.json')).size / 1024;
function heapMiB(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

const dirs = [0, 1].map(() => mkdtempSync(join(tmpdir(), 'weft-bench-tombstones-')));
const port = await freePorts(4);
const routers: Router[] = [];
try {
  routers.push(
    await Router.start(
      routerOptions({ dataDir: dirs[0], port, nickname: 'a', gossipInterval: GOSSIP_MS }),
      silentLogger,
    ),
  );
  routers.push(
    await Router.start(
      routerOptions({
        dataDir: dirs[1],
        port: port + 2,
        nickname: 'b',
        gossipInterval: GOSSIP_MS,
        peers: [`127.0.0.1:${port}`],
      }),
      silentLogger,
    ),
  );
  const [a, b] = routers;
  await eventually('connected', async () => a.mesh.connections.get(b.mesh.name)?.established);
  const ids: string[] = [];
  for (let i = 0; i < RULES; i++) {
    const id = PolicyTable.newId();
    ids.push(id);
    a.policy.table.add(ruleFromRequest(id, { to: `g${i}`, from: 'web', proto: 'tcp', port: String(1 + (i % 60000)) }));
  }
  await eventually('the rules at b', async () => b.policy.table.rules().length === RULES, 60_000, 50);
  const withRules = { kib: kib(dirs[1]), heap: heapMiB() };
  for (const id of ids) b.policy.table.remove(id);
  const t0 = performance.now();
  await eventually('the removals at a', async () => a.policy.table.rules().length === 0, 60_000, 20);
  const removed = { kib: Math.max(kib(dirs[0]), kib(dirs[1])), heap: heapMiB() };
  await eventually(
    'collected on both',
    async () => routers.every((r) => r.policy.table.all().length === 0),
    10 * 60_000,
    20,
  );
  const collectedMs = performance.now() - t0;
  const collected = { kib: Math.max(kib(dirs[0]), kib(dirs[1])), heap: heapMiB() };
  const row = (what: string, x: { kib: number; heap: number }) =>
    `| ${what} | ${x.kib.toFixed(1)} | ${(x.kib / withRules.kib).toFixed(3)} | ${x.heap.toFixed(1)} |`;
  console.log(`${RULES} rules, gossip interval ${GOSSIP_MS} ms, two routers in one process`);
  console.log('| state | policy.json KiB (larger of the two) | / with the rules | heap MiB (both routers) |');
  console.log('|---|---|---|---|');
  console.log(row('with the rules (anchor)', withRules));
  console.log(row('all removed (tombstones)', removed));
  console.log(row('tombstones collected', collected));
  console.log(`removal to collection on both routers: ${(collectedMs / 1000).toFixed(1)} s`);
} finally {
  for (const r of routers.reverse()) await r.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
