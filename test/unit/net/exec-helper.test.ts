// The command helper (native/weft-exec) as the router uses it: output, errors and exit codes as a
// directly started command gives them, input of any size, answers in order, a command that hangs,
// a helper that dies. No root needed.
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ExecHelper, HelperPool, HelperUnavailable } from '../../../net/exec-helper.js';
import { projectRoot } from '../../../lib/project-root.js';

const path = join(projectRoot(), 'native', 'build', 'weft-exec');

describe('the command helper', () => {
  it('is built with the package (a C compiler is part of the build)', () => {
    expect(existsSync(path)).toBe(true);
  });

  it('gives stdout, stderr and the exit code; the input reaches the command whole', async () => {
    const h = new ExecHelper(path);
    try {
      const ok = await h.run(['sh', '-c', 'cat; echo to-stderr >&2'], 'hello\n', 5000);
      expect([ok.code, ok.stdout.toString(), ok.stderr.toString()]).toEqual([0, 'hello\n', 'to-stderr\n']);
      const fail = await h.run(['sh', '-c', 'echo why >&2; exit 3'], undefined, 5000);
      expect([fail.code, fail.stderr.toString()]).toEqual([3, 'why\n']);
      // Larger than a pipe's buffer both ways (the helper writes and reads at once).
      const big = 'x'.repeat(3 << 20);
      const echoed = await h.run(['cat'], big, 10_000);
      expect(echoed.stdout.length).toBe(big.length);
      expect(echoed.stdout.toString() === big).toBe(true);
    } finally {
      h.end();
    }
  });

  it('many requests at once are answered each with its own result', async () => {
    const h = new ExecHelper(path);
    try {
      const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => h.run(['echo', String(i)], undefined, 5000)));
      expect(rs.map((r) => r.stdout.toString().trim())).toEqual(Array.from({ length: 50 }, (_, i) => String(i)));
    } finally {
      h.end();
    }
  });

  it('a missing command is ENOENT; one that hangs is killed at its timeout; the helper goes on', async () => {
    const h = new ExecHelper(path);
    try {
      expect((await h.run(['no-such-command-here'], undefined, 5000)).spawnErrno).toBe(2);
      const slow = await h.run(['sleep', '30'], undefined, 300);
      expect([slow.code, slow.signal]).toEqual([null, 9]);
      expect((await h.run(['true'], undefined, 5000)).code).toBe(0);
    } finally {
      h.end();
    }
  });

  it('a helper that dies fails what waits; the next command starts another', async () => {
    const h = new ExecHelper(path);
    const waiting = h.run(['sleep', '30'], undefined, 60_000);
    await new Promise((r) => setTimeout(r, 100));
    h.end();
    await expect(waiting).rejects.toThrow(/ended/);
    expect((await h.run(['echo', 'again'], undefined, 5000)).stdout.toString()).toBe('again\n');
    h.end();
  });

  it('with no descriptors left (EMFILE), a command fails saying the helper could not start; then the next one runs', async () => {
    // This process's own soft limit, lowered to just above what it has open, then filled.
    const [soft, hard] = execFileSync('prlimit', [
      '--pid',
      String(process.pid),
      '--nofile',
      '--output=SOFT,HARD',
      '--noheadings',
    ])
      .toString()
      .trim()
      .split(/\s+/);
    const open = readdirSync('/proc/self/fd').length;
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${open + 16}:${hard}`]);
    const fds: number[] = [];
    const h = new ExecHelper(path);
    try {
      try {
        for (;;) fds.push(openSync('/dev/null', 'r'));
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('EMFILE');
      }
      await expect(h.run(['echo', 'x'], undefined, 5000)).rejects.toThrow(/could not start.*EMFILE/);
    } finally {
      for (const fd of fds) closeSync(fd);
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${soft}:${hard}`]);
    }
    expect((await h.run(['echo', 'again'], undefined, 5000)).stdout.toString()).toBe('again\n');
    h.end();
  });

  it("enters a network namespace itself for nsenter --net=PATH, with nsenter's errors", async () => {
    const h = new ExecHelper(path);
    try {
      const gone = await h.run(['nsenter', '--net=/run/netns/no-such-namespace', 'ip', 'link'], undefined, 5000);
      expect([gone.code, gone.stderr.toString()]).toEqual([
        1,
        'nsenter: cannot open /run/netns/no-such-namespace: No such file or directory\n',
      ]);
      // Entering a namespace takes CAP_SYS_ADMIN: as root, the command runs in the namespace given.
      if (process.getuid?.() !== 0) return;
      const own = `/proc/${process.pid}/ns/net`;
      const r = await h.run(['nsenter', `--net=${own}`, 'readlink', '/proc/self/ns/net'], undefined, 5000);
      expect([r.code, r.stdout.toString().trim()]).toEqual([0, readlinkSync(own)]);
      const missing = await h.run(['nsenter', `--net=${own}`, 'no-such-command-here'], undefined, 5000);
      expect([missing.code, missing.stderr.toString()]).toEqual([
        127,
        'nsenter: failed to execute no-such-command-here: No such file or directory\n',
      ]);
      const input = await h.run(['nsenter', `--net=${own}`, 'cat'], 'through\n', 5000);
      expect(input.stdout.toString()).toBe('through\n');
    } finally {
      h.end();
    }
  });

  it('refuses a command line it could not send whole', async () => {
    const h = new ExecHelper(path);
    await expect(h.run([], undefined, 1000)).rejects.toThrow(/no command/);
    await expect(h.run(['echo', 'a\0b'], undefined, 1000)).rejects.toThrow(/NUL/);
    await expect(h.run(['echo', ...Array.from({ length: 5000 }, () => 'x')], undefined, 1000)).rejects.toThrow(
      /too large/,
    );
    h.end();
  });

  it('a helper that cannot run (not executable, or built for another machine) refuses every command as unavailable, so the caller starts it itself', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'weft-helper-'));
    try {
      const notExecutable = join(dir, 'weft-exec');
      writeFileSync(notExecutable, '#!/bin/sh\n', { mode: 0o644 });
      const pool = new HelperPool(notExecutable);
      const [first, second] = await Promise.allSettled([
        pool.run(['true'], undefined, 5000),
        pool.run(['true'], undefined, 5000),
      ]);
      for (const r of [first, second]) {
        expect(r.status).toBe('rejected');
        expect((r as PromiseRejectedResult).reason).toBeInstanceOf(HelperUnavailable);
      }
      expect(pool.unavailable?.message).toMatch(/cannot run: .*EACCES/);
      await expect(pool.run(['true'], undefined, 5000)).rejects.toBeInstanceOf(HelperUnavailable);
      pool.end();
      // Built for another machine: exec hands the file to /bin/sh, which fails on it before any answer.
      const foreign = join(dir, 'weft-exec-arm');
      writeFileSync(
        foreign,
        Buffer.concat([Buffer.from('7f454c46010101', 'hex'), Buffer.alloc(9), Buffer.from('0200280067', 'hex')]),
        {
          mode: 0o755,
        },
      );
      const other = new HelperPool(foreign);
      await expect(other.run(['true'], undefined, 5000)).rejects.toBeInstanceOf(HelperUnavailable);
      expect(other.unavailable?.message).toMatch(/before it ran/);
      other.end();
      // Something that runs and ends at once, even with exit code 0, never said it runs: not a helper.
      const quits = join(dir, 'weft-exec-quits');
      writeFileSync(quits, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
      const third = new HelperPool(quits);
      await expect(third.run(['true'], undefined, 5000)).rejects.toBeInstanceOf(HelperUnavailable);
      expect(third.unavailable?.message).toMatch(/ended \(exit code 0\) before it ran/);
      third.end();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a pool: a command whose time ran out while it waited for a helper is not started', async () => {
    const pool = new HelperPool(path, 1);
    try {
      const slow = pool.run(['sleep', '0.5'], undefined, 5000);
      await expect(pool.run(['true'], undefined, 50)).rejects.toThrow(
        /waited .* for a command helper: true not started/,
      );
      expect((await slow).code).toBe(0);
    } finally {
      pool.end();
    }
  });

  it('a pool: a command that hangs holds up only its own helper', async () => {
    const pool = new HelperPool(path, 2);
    try {
      const hung = pool.run(['sleep', '30'], undefined, 60_000);
      hung.catch(() => undefined); // ended with the pool below
      const first = await Promise.race([
        hung.then(() => 'the hung command'),
        pool.run(['echo', 'meanwhile'], undefined, 5000).then((r) => r.stdout.toString().trim()),
      ]);
      expect(first).toBe('meanwhile');
    } finally {
      pool.end();
    }
  });

  it('a pool: commands that come together share one helper, in the order asked', async () => {
    const pool = new HelperPool(path, 4);
    try {
      const rs = await Promise.all(
        Array.from({ length: 20 }, (_, i) => pool.run(['echo', String(i)], undefined, 5000)),
      );
      expect(rs.map((r) => r.stdout.toString().trim())).toEqual(Array.from({ length: 20 }, (_, i) => String(i)));
      expect(pool.started).toBe(1);
    } finally {
      pool.end();
    }
  });
});
