// Persisted state that is damaged is reported, not silently reset, and never crashes the router.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { callRouter } from '../../../cli/http.js';
import { PolicyTable } from '../../../policy/table.js';
import { ruleFromRequest } from '../../../policy/rules.js';
import { projectRoot } from '../../../lib/project-root.js';
import { renderStatus } from '../../../router/render.js';
import { eventually, sleep } from '../../harness/cluster.js';
import { isRoot } from '../../harness/root.js';
import { silentLogger } from '../../../lib/logger.js';
import { Router } from '../../../router/router.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';

it('a damaged IPAM store stops the router from starting, saying what to do, and is left for inspection', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'weft-store-'));
  const port = await freePorts(4);
  try {
    const opts = routerOptions({ dataDir, port, nickname: 'store', ipallocInit: 'consensus=1' });
    const r = await Router.start(opts, silentLogger);
    await r.ipam.allocate('before');
    await r.stop();
    // A clean stop marks the store as checked, so the next start skips the check; a start takes the
    // mark away (a crash while running means a check next time).
    const mark = join(dataDir, 'ipam', 'clean-stop');
    expect(existsSync(mark)).toBe(true);
    const clean = await Router.start(opts, silentLogger);
    expect(existsSync(mark)).toBe(false);
    expect(clean.ipam.lookup('before')).toHaveLength(1);
    await clean.stop();
    expect(existsSync(mark)).toBe(true);
    // Overwrite lmdb's meta pages after the clean stop: opening this in the router's own process would
    // abort it, and the mark no longer matches the file.
    const file = join(dataDir, 'ipam', 'data.mdb');
    const fd = openSync(file, 'r+');
    writeSync(fd, Buffer.alloc(8192, 0xab), 0, 8192, 0);
    closeSync(fd);
    await expect(Router.start(opts, silentLogger)).rejects.toThrow(
      /the IPAM store in .*ipam is damaged: .*It was left as it is\. Move it away \(or run weft reset --force\)/,
    );
    expect(existsSync(file)).toBe(true);
    // Moved away: the router starts afresh.
    rmSync(join(dataDir, 'ipam'), { recursive: true });
    const again = await Router.start(opts, silentLogger);
    await again.stop();
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}, 30_000);

describe('state files', () => {
  it('a damaged state file stops the router, saying which, why and what to do, and is left as it is', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-state-'));
    const port = await freePorts(4);
    const opts = routerOptions({ dataDir, port, nickname: 'state', ipallocInit: 'consensus=1' });
    try {
      const r = await Router.start(opts, silentLogger);
      r.policy.table.add(ruleFromRequest(PolicyTable.newId(), { to: 'db', from: 'web' }));
      r.services.create({ name: 'web', group: 'web' });
      r.names.add('keep.weft.local', 'c1', '10.32.0.9');
      await r.stop();
      for (const file of [
        'policy.json',
        'services.json',
        'names.json',
        'policy-members.json',
        'services-members.json',
      ]) {
        const path = join(dataDir, file);
        const good = readFileSync(path);
        for (const damaged of [
          good.subarray(0, Math.floor(good.length / 2)),
          Buffer.from('{"not": "a list"}'),
          Buffer.from('[["x", 1, "zz", null]]'),
        ]) {
          writeFileSync(path, damaged);
          await expect(Router.start(opts, silentLogger), `${file}: ${damaged.toString().slice(0, 30)}`).rejects.toThrow(
            new RegExp(`the state file .*${file.replace('.', '\\.')} is damaged \\(.+\\); .*move it away`),
          );
          expect(readFileSync(path)).toEqual(damaged);
        }
        writeFileSync(path, good);
      }
      const again = await Router.start(opts, silentLogger);
      expect(again.policy.table.rules()).toHaveLength(1);
      expect(again.services.table.values()).toHaveLength(1);
      await again.stop();
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  it.skipIf(!isRoot)(
    'a full data directory: a change is in force and shown as not saved, nothing crashes; with room again it is saved',
    async () => {
      const dataDir = mkdtempSync(join(tmpdir(), 'weft-full-'));
      const port = await freePorts(4);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'weft-test-full', dataDir]);
      let a: Router | null = null;
      let b: Router | null = null;
      const otherDir = mkdtempSync(join(tmpdir(), 'weft-full-b-'));
      try {
        a = await Router.start(
          routerOptions({ dataDir, port, nickname: 'a', ipallocInit: 'consensus=1' }),
          silentLogger,
        );
        b = await Router.start(
          routerOptions({ dataDir: otherDir, port: port + 2, nickname: 'b', peers: [`127.0.0.1:${port}`] }),
          silentLogger,
        );
        await eventually('connected', async () => a!.mesh.connections.get(b!.mesh.name)?.established);
        // Fill the data directory.
        const filler = join(dataDir, 'filler');
        try {
          execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { stdio: 'ignore' });
        } catch {
          /* dd stops with ENOSPC: the disk is full */
        }
        // A rule made here, and one merged from the other peer: both in force, neither saved.
        const here = ruleFromRequest(PolicyTable.newId(), { to: 'db', from: 'web' });
        a.policy.table.add(here);
        const there = ruleFromRequest(PolicyTable.newId(), { to: 'db', from: 'admin' });
        b.policy.table.add(there);
        await eventually('the merged rule', async () => a!.policy.table.rules().length === 2, 5000, 50);
        const status = renderStatus(a.report());
        expect(status).toMatch(/State: NOT SAVED since .*policy\.json: .*ENOSPC/);
        expect(a.report().state.length).toBeGreaterThan(0);
        // Room again: the next change is saved, and the file then has everything in force.
        rmSync(filler);
        a.policy.table.remove(there.id);
        await eventually('saved again', async () => a!.report().state.length === 0, 5000, 50);
        const saved = JSON.parse(readFileSync(join(dataDir, 'policy.json'), 'utf8')) as [
          string,
          number,
          string,
          unknown,
        ][];
        expect(saved.filter(([, , , v]) => v !== null).map(([id]) => id)).toEqual([here.id]);
      } finally {
        await a?.stop();
        await b?.stop();
        execFileSync('umount', [dataDir]);
        rmSync(dataDir, { recursive: true, force: true });
        rmSync(otherDir, { recursive: true, force: true });
      }
    },
    60_000,
  );

  it('kill -9 while rules are being written loses no rule the API acknowledged, and leaves readable files', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-kill-'));
    const port = await freePorts(4);
    const addr = `127.0.0.1:${port + 1}`;
    const acked = new Set<string>();
    const start = () =>
      spawn(
        process.execPath,
        [
          join(projectRoot(), 'dist', 'router', 'main.js'),
          '--data-dir',
          dataDir,
          '--port',
          String(port),
          '--host',
          '127.0.0.1',
          '--http-addr',
          addr,
          '--datapath',
          'none',
          '--no-dns',
          '--docker-api',
          '',
          '--docker-plugin',
          '',
          '--metrics-addr',
          '',
          '--ipalloc-init',
          'consensus=1',
        ],
        { stdio: 'ignore' },
      );
    try {
      for (let round = 0; round < 3; round++) {
        const child = start();
        await eventually(
          'the router answers',
          async () => (await callRouter(addr, 'GET', '/policy', undefined, 1000).catch(() => null))?.status === 200,
          20_000,
          50,
        );
        const listed = JSON.parse((await callRouter(addr, 'GET', '/policy', undefined, 2000)).text) as {
          rules: { id: string }[];
        };
        for (const id of acked)
          expect(
            listed.rules.map((r) => r.id),
            `round ${round}`,
          ).toContain(id);
        let writing = true;
        const writer = (async () => {
          for (let i = 0; writing; i++) {
            const r = await callRouter(addr, 'POST', '/policy', { to: `g${round}x${i}`, from: 'any' }, 2000).catch(
              () => null,
            );
            if (r?.status === 200) acked.add((JSON.parse(r.text) as { id: string }).id);
          }
        })();
        await sleep(300 + Math.random() * 500);
        child.kill('SIGKILL');
        writing = false;
        await writer;
        await new Promise((r) =>
          child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r),
        );
        // Whatever the kill hit, the file is whole.
        expect(() => JSON.parse(readFileSync(join(dataDir, 'policy.json'), 'utf8'))).not.toThrow();
      }
      expect(acked.size).toBeGreaterThan(10);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);
});
