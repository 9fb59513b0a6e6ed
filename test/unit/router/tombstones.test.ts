// Removed rules and services are forgotten once every peer has the removal (the
// state files stop growing with every removal ever made), a peer that is down
// holds that back, `weft status policy` says for whom, and `weft rmpeer` of a
// peer gone for good lets it go on.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../lib/logger.js';
import { Router } from '../../../router/router.js';
import { run } from '../../harness/exec.js';
import { WEFT_CLI, eventually, sleep } from '../../harness/cluster.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';

describe('removed rules and services are forgotten once every peer has the removal', () => {
  let a: Router;
  let b: Router | null = null;
  let port: number;
  const dirs: string[] = [];
  const api = (p: number) => `http://127.0.0.1:${p + 1}`;
  const stored = (dir: string, file: string) =>
    (JSON.parse(readFileSync(join(dir, file), 'utf8')) as unknown[][]).map((w) => w[0]);
  const cli = (args: string[]) =>
    run(process.execPath, [WEFT_CLI, ...args], { env: { ...process.env, WEFT_HTTP_ADDR: `127.0.0.1:${port + 1}` } });

  beforeAll(async () => {
    port = await freePorts(4);
    for (const _ of [0, 1]) dirs.push(mkdtempSync(join(tmpdir(), 'weft-tombstones-')));
    // The gossip interval of 1 s (test options) makes a removal collectable 2 s after every peer has it.
    a = await Router.start(routerOptions({ dataDir: dirs[0], port, nickname: 'a' }), silentLogger);
    b = await Router.start(
      routerOptions({ dataDir: dirs[1], port: port + 2, nickname: 'b', peers: [`127.0.0.1:${port}`] }),
      silentLogger,
    );
    await eventually('connected', async () => a.mesh.connections.get(b!.mesh.name)?.established);
  });
  afterAll(async () => {
    await b?.stop();
    await a?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const addRule = async (p: number, port: string) => {
    const res = await fetch(`${api(p)}/policy`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ to: 'db', from: 'web', proto: 'tcp', port }),
    });
    expect(res.status).toBe(200);
    return ((await res.json()) as { id: string }).id;
  };

  it('with every peer up, a removed rule and a removed service leave policy.json and services.json everywhere', async () => {
    const rule = await addRule(port, '5432');
    expect(a.services.create({ name: 'web', group: 'web' })).toBeTruthy();
    await eventually(
      'both at b',
      async () => stored(dirs[1], 'policy.json').includes(rule) && b!.services.table.get('web'),
    );
    expect((await fetch(`${api(port + 2)}/policy/${rule}`, { method: 'DELETE' })).status).toBe(200);
    expect(b!.services.remove('web')).toBeTruthy();
    await eventually(
      'the removals forgotten in both routers and their files',
      async () =>
        dirs.every((d) => !stored(d, 'policy.json').includes(rule) && !stored(d, 'services.json').includes('web')),
      15_000,
      200,
    );
    expect((await cli(['status', 'policy'])).stdout).not.toMatch(/removed rules remembered/);
  });

  it('a peer that is down holds it back, status says so; weft rmpeer of it lets it go', async () => {
    const rule = await addRule(port, '6379');
    await eventually('the rule at b', async () => stored(dirs[1], 'policy.json').includes(rule));
    const bName = b!.mesh.name;
    await b!.stop();
    b = null;
    await eventually('b unreachable', async () => !a.mesh.isReachable(bName));
    expect((await fetch(`${api(port)}/policy/${rule}`, { method: 'DELETE' })).status).toBe(200);
    await sleep(4000); // past the delay: still held, for b
    expect(stored(dirs[0], 'policy.json')).toContain(rule);
    const status = (await cli(['status', 'policy'])).stdout;
    expect(status).toContain(`removed rules remembered until every peer has the removal: 1; waiting for ${bName}`);
    const rm = await cli(['rmpeer', bName]);
    expect(rm.stdout).toMatch(/policy member/);
    await eventually('forgotten at a', async () => !stored(dirs[0], 'policy.json').includes(rule), 10_000, 200);
    expect((await cli(['status', 'policy'])).stdout).not.toMatch(/removed rules remembered/);
    expect(readFileSync(join(dirs[0], 'policy-members.json'), 'utf8')).toContain(`"forgotten"`);
  });
});
