// Every gossip channel a router serves, fed arbitrary and mutated payloads as if
// from a peer (gossip, unicast, broadcast, digest): each call returns or throws an
// Error (which the mesh counts as rejected gossip and otherwise ignores), and the
// router's state stays usable.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../lib/logger.js';
import { Router } from '../../../router/router.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';

describe('gossip channels under hostile payloads', () => {
  let router: Router;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'weft-gossip-fuzz-'));
    const port = await freePorts(2);
    router = await Router.start(
      routerOptions({ dataDir, port, nickname: 'fuzz', ipallocInit: 'consensus=1' }),
      silentLogger,
    );
    await router.ipam.allocate('before');
    router.names.add('keep.weft.local', 'before', '10.32.0.1');
  });
  afterAll(async () => {
    await router.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('each channel answers arbitrary and mutated bytes with a result or an Error, and keeps working', async () => {
    const channels = [...router.mesh.channels.values()];
    expect(channels.map((c) => c.name).sort()).toEqual(
      expect.arrayContaining(['dns', 'ipam', 'topology', 'policy', 'services', 'service-health']),
    );
    // Valid payloads to mutate: each channel's own full state.
    const samples = new Map(channels.map((c) => [c.name, c.gossiper.gossip()?.encode() ?? new Uint8Array()]));
    const from = '02:00:00:00:00:09';
    let calls = 0;
    let errors = 0;
    fc.assert(
      fc.property(
        fc.constantFrom(...channels),
        fc.uint8Array({ maxLength: 400 }),
        fc.nat(),
        fc.nat(255),
        fc.boolean(),
        (ch, junk, pos, val, mutate) => {
          const base = samples.get(ch.name)!;
          const payload =
            mutate && base.length > 0
              ? Uint8Array.from(base).fill(val, pos % base.length, (pos % base.length) + 1)
              : junk;
          const calls_ = [
            () => ch.gossiper.onGossip(payload, from),
            () => ch.gossiper.onUnicast?.(from, payload),
            () => ch.gossiper.onBroadcast?.(from, payload),
            () => ch.gossiper.compareDigest?.(payload),
          ];
          for (const call of calls_) {
            calls++;
            try {
              call();
            } catch (err) {
              errors++;
              expect(err).toBeInstanceOf(Error);
            }
          }
        },
      ),
      { numRuns: 1000 },
    );
    expect(errors).toBeGreaterThan(0);
    expect(errors).toBeLessThan(calls);
    // Still usable: our own name and address are there, and allocation works and is distinct.
    expect(router.names.table.lookup('keep.weft.local')).toContain('10.32.0.1');
    const before = router.ipam.lookup('before');
    const after = await router.ipam.allocate('after');
    expect(before).toHaveLength(1);
    expect(after.addr).not.toBe(before[0]);
  });
});
