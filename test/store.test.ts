// Persisted state that is damaged is reported, not silently reset, and never crashes the router.
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { silentLogger } from '../router/mesh/mesh.js';
import { Router } from '../router/router.js';
import { routerOptions } from './harness/router-options.js';

it('a damaged IPAM store stops the router from starting, saying what to do, and is left for inspection', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'weft-store-'));
  const port = 41000 + Math.floor(Math.random() * 4000);
  try {
    const opts = routerOptions({ dataDir, port, nickname: 'store', ipallocInit: 'consensus=1' });
    const r = await Router.start(opts, silentLogger);
    await r.ipam.allocate('before');
    await r.stop();
    // Overwrite lmdb's meta pages: opening this in the router's own process would abort it.
    const file = join(dataDir, 'ipam', 'data.mdb');
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(8192, 0xab), 0, 8192, 0);
    closeSync(fd);
    await expect(Router.start(opts, silentLogger)).rejects.toThrow(/the IPAM store in .*ipam is damaged: .*It was left as it is\. Move it away \(or run weft reset --force\)/);
    expect(existsSync(file)).toBe(true);
    // Moved away: the router starts afresh.
    rmSync(join(dataDir, 'ipam'), { recursive: true });
    const again = await Router.start(opts, silentLogger);
    await again.stop();
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}, 30_000);
