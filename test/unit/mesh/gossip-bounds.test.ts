// A mesh member that holds the password is trusted with the mesh's state, but
// what it says is still bounded: versions at or over the cap, records of peers
// that are in no topology, and service VIPs outside the service range are
// refused or expire, and the mesh goes on converging.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pack, randomPeerName } from '../../../mesh/index.js';
import { silentLogger } from '../../../lib/logger.js';
import { Router } from '../../../router/router.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';
import { eventually } from '../../harness/cluster.js';

describe('what peers say is bounded', () => {
  let a: Router;
  let b: Router;
  const dirs: string[] = [];
  beforeAll(async () => {
    const port = await freePorts(4);
    for (const _ of [0, 1]) dirs.push(mkdtempSync(join(tmpdir(), 'weft-bounds-')));
    a = await Router.start(routerOptions({ dataDir: dirs[0], port, nickname: 'a' }), silentLogger);
    b = await Router.start(
      routerOptions({ dataDir: dirs[1], port: port + 2, nickname: 'b', peers: [`127.0.0.1:${port}`] }),
      silentLogger,
    );
    await eventually('connected', async () => a.mesh.connections.get(b.mesh.name)?.established);
  });
  afterAll(async () => {
    await b?.stop();
    await a?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const channel = (name: string) => a.mesh.channels.get(name)!.gossiper;

  it('a register or a record at a capped-out version is refused; the table stays as it was', () => {
    const rule = {
      id: 'ab'.repeat(16),
      direction: 'ingress',
      target: { kind: 'group', name: 'db' },
      peer: { kind: 'any' },
      proto: 'any',
    };
    const from = b.mesh.name;
    for (const version of [2 ** 52 + 1, Number.MAX_SAFE_INTEGER]) {
      expect(() => channel('policy').onGossip(pack([[rule.id, version, from, rule]]), from)).toThrow(/above the cap/);
      expect(() =>
        channel('dns').onGossip(pack([[from, version, [['x.weft.local.', 'c1', '10.32.0.9']]]]), from),
      ).toThrow(/above the cap/);
    }
    expect(a.policy.table.rules()).toEqual([]);
    expect(a.names.table.lookup('x.weft.local')).toEqual([]);
  });

  it('a service whose VIP is outside the service range is refused: no container would be redirected to it', () => {
    const from = b.mesh.name;
    const svc = { name: 'web', vip: '198.18.0.1', group: 'web', affinity: 'none', created: 1 };
    expect(() => channel('services').onGossip(pack([['web', 1, from, svc]]), from)).toThrow(
      /outside the service range 10\.96\.0\.0\/16/,
    );
    expect(a.services.table.values()).toEqual([]);
    expect(a.names.table.lookup('web.weft.local')).toEqual([]);
  });

  it('records of a peer in no topology expire, and the same record passed back by a neighbour is not taken again', async () => {
    const phantom = randomPeerName();
    const record = pack([[phantom, 5, [['web', 'netns:x']]]]);
    const health = channel('service-health');
    expect(health.onGossip(record, b.mesh.name)).not.toBeNull();
    expect(a.services.health.records.has(phantom)).toBe(true);
    await eventually('the phantom record to expire', async () => !a.services.health.records.has(phantom), 10_000, 100);
    expect(health.onGossip(record, b.mesh.name)).toBeNull();
    expect(a.services.health.records.has(phantom)).toBe(false);
  });

  it('and through all of it the mesh converges: a rule made on one peer is on the other', async () => {
    const { ruleFromRequest } = await import('../../../policy/rules.js');
    const { PolicyTable } = await import('../../../policy/table.js');
    const rule = ruleFromRequest(PolicyTable.newId(), { to: 'db', from: 'web' });
    b.policy.table.add(rule);
    await eventually('the rule on a', async () => a.policy.table.rules().some((r) => r.id === rule.id), 5000, 50);
    expect(rule.id).toMatch(/^[0-9a-f]{32}$/); // 128-bit rule ids
  });
});
