// The router's commands through native/weft-exec (see its header): small
// long-lived processes that start each command with posix_spawn, so the router
// is not forked for every `ip` or `nft` (about 8 ms of its CPU each, and most
// of an attach). Each helper runs one request at a time, in order; another is
// started beside it only when its command runs long (HelperPool), so a command
// that hangs until its timeout holds up the others briefly. A helper is started
// when needed and again after it dies. Without the binary (not built), or with WEFT_EXEC_HELPER=off, the
// caller starts commands itself.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { killChild, unrefChild } from './child.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../lib/project-root.js';

/** The helper itself cannot run (not executable, a noexec mount, another architecture): nothing was started. */
export class HelperUnavailable extends Error {}

/** How starting a binary that can never run fails (EACCES: not executable, or a noexec mount). */
const UNRUNNABLE = new Set(['EACCES', 'ENOEXEC']);

export interface HelperResult {
  /** Exit code, or null when killed. */
  code: number | null;
  signal: number | null;
  /** errno when the command could not be started (ENOENT: not found). */
  spawnErrno: number | null;
  /** Its output passed the helper's limit (64 MiB) and it was killed. */
  overflow: boolean;
  stdout: Buffer;
  stderr: Buffer;
}

interface Pending {
  resolve: (r: HelperResult) => void;
  reject: (e: Error) => void;
  /** The helper kills a command at its timeout; this catches a helper that does not answer. */
  timer: NodeJS.Timeout;
}

export class ExecHelper {
  private child: ChildProcessWithoutNullStreams | null = null;
  private readonly waiting = new Map<number, Pending>();
  private nextId = 1;
  private buffered: Buffer[] = [];
  private bufferedLen = 0;
  /** Whether the helper said it runs (its first word, a frame of length 0), whatever ends it later. */
  private running = false;

  constructor(private readonly path: string) {}

  /** Runs argv (argv[0] looked up in PATH) with `input` on its standard input. */
  run(argv: string[], input: string | undefined, timeoutMs: number): Promise<HelperResult> {
    const id = this.nextId;
    this.nextId = id >= 0xffffffff ? 1 : id + 1;
    const strings = Buffer.from(argv.map((a) => `${a}\0`).join(''));
    const data = Buffer.from(input ?? '');
    const frame = Buffer.alloc(20 + strings.length + data.length);
    frame.writeUInt32LE(16 + strings.length + data.length, 0);
    frame.writeUInt32LE(id, 4);
    frame.writeUInt32LE(Math.max(1, Math.min(timeoutMs, 2 ** 31)), 8);
    frame.writeUInt32LE(argv.length, 12);
    frame.writeUInt32LE(data.length, 16);
    strings.copy(frame, 20);
    data.copy(frame, 20 + strings.length);
    return new Promise((resolve, reject) => {
      if (argv.length === 0 || argv.some((a) => a.includes('\0')))
        return reject(new Error('a command line with no command or a NUL byte'));
      // The helper's own limits (native/weft-exec.c): past them it would end, and look unable to run.
      if (argv.length > 4096 || frame.length - 4 > 64 << 20)
        return reject(
          new Error(
            `a command line too large for the command helper (${argv.length} arguments, ${frame.length} bytes)`,
          ),
        );
      // Referenced: it keeps the process alive until the answer comes.
      const timer = setTimeout(() => this.fail(new Error('the command helper did not answer')), timeoutMs + 5000);
      this.waiting.set(id, { resolve, reject, timer });
      try {
        // Without descriptors (EMFILE) the child has no streams: its 'error' event, due next, fails
        // this request with the reason.
        (this.process().stdin as ChildProcessWithoutNullStreams['stdin'] | null)?.write(frame);
      } catch (err) {
        clearTimeout(timer);
        this.waiting.delete(id);
        reject(err as Error);
      }
    });
  }

  /** Requests sent and not answered yet. */
  get pending(): number {
    return this.waiting.size;
  }

  /** Ends the helper; what waits fails (the next command starts another). */
  end(): void {
    this.fail(new Error('the command helper ended'));
  }

  private process(): ChildProcessWithoutNullStreams {
    if (this.child) return this.child;
    const cannotRun = (why: string) => new HelperUnavailable(`the command helper ${this.path} cannot run: ${why}`);
    let child: ChildProcessWithoutNullStreams;
    try {
      child = spawn(this.path, [], { stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      // Some failures to start (ENOEXEC with some libuv builds) are thrown at once.
      const e = err as NodeJS.ErrnoException;
      throw UNRUNNABLE.has(e.code ?? '') ? cannotRun(e.message) : e;
    }
    this.child = child;
    this.running = false;
    this.buffered = [];
    this.bufferedLen = 0;
    // First: with no descriptors left (EMFILE) the streams are missing, and the error must have a listener.
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (this.child !== child) return;
      // A binary that can never run falls back for good; anything else (no descriptors, no
      // processes, the file gone during an upgrade) fails what waits, and the next command tries again.
      this.fail(
        UNRUNNABLE.has(e.code ?? '')
          ? cannotRun(e.message)
          : new Error(`the command helper could not start: ${e.message}`),
      );
    });
    child.stdout?.on('data', (d: Buffer) => {
      if (this.child === child) this.onData(d);
    });
    child.stderr?.resume();
    // 'close', not 'exit': by then everything it wrote has been read (its first word included).
    child.on('close', (code, signal) => {
      if (this.child !== child) return;
      // A file the kernel cannot load (another architecture) is retried by exec through /bin/sh,
      // which fails on it: a helper that ends before it said it runs never ran.
      if (!this.running)
        this.fail(cannotRun(`it ended (${signal ?? `exit code ${code}`}) before it ran (built for another machine?)`));
      else this.fail(new Error(`the command helper ended (${signal ?? `exit code ${code}`})`));
    });
    child.stdin?.on('error', () => undefined); // reported by 'close'
    // Never keeps the router alive; ends with its standard input when the router does.
    unrefChild(child);
    return child;
  }

  private onData(d: Buffer): void {
    this.buffered.push(d);
    this.bufferedLen += d.length;
    // Joined only once a whole answer is there (an answer may be megabytes in many chunks).
    for (;;) {
      if (this.bufferedLen < 4) return;
      if (this.buffered[0].length < 4) this.buffered = [Buffer.concat(this.buffered, this.bufferedLen)];
      const need = 4 + this.buffered[0].readUInt32LE(0);
      if (this.bufferedLen < need) return;
      const all = this.buffered.length === 1 ? this.buffered[0] : Buffer.concat(this.buffered, this.bufferedLen);
      const rest = all.subarray(need);
      this.buffered = rest.length > 0 ? [rest] : [];
      this.bufferedLen = rest.length;
      this.answer(all.subarray(0, need));
    }
  }

  private answer(a: Buffer): void {
    this.running = true; // its first word, or any answer
    if (a.length === 4) return;
    if (a.length < 20) return this.fail(new Error('the command helper answered a frame too short to read'));
    const id = a.readUInt32LE(4);
    const status = a.readUInt32LE(8);
    const outLen = a.readUInt32LE(12);
    const errLen = a.readUInt32LE(16);
    const p = this.waiting.get(id);
    if (!p) return;
    this.waiting.delete(id);
    clearTimeout(p.timer);
    p.resolve({
      code: status < 256 ? status : null,
      signal: status >= 1000 && status < 2000 ? status - 1000 : null,
      spawnErrno: status >= 2000 && status < 3000 ? status - 2000 : null,
      overflow: status === 3000,
      stdout: Buffer.from(a.subarray(20, 20 + outLen)),
      stderr: Buffer.from(a.subarray(20 + outLen, 20 + outLen + errLen)),
    });
  }

  private fail(err: Error): void {
    const child = this.child;
    this.child = null;
    if (child) killChild(child);
    for (const p of this.waiting.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.waiting.clear();
  }
}

/** The binary native/build.mjs makes (null when not built, or turned off with WEFT_EXEC_HELPER=off). */
function helperPath(): string | null {
  if (process.env.WEFT_EXEC_HELPER === 'off') return null;
  const path = join(projectRoot(), 'native', 'build', 'weft-exec');
  return existsSync(path) ? path : null;
}

/** A command running longer than this lets the next one start another helper (when the pool may grow). */
const SPILL_MS = 100;

interface Slot {
  helper: ExecHelper;
  /** When its command in flight was sent (null: idle). */
  since: number | null;
}

interface Queued {
  argv: string[];
  input: string | undefined;
  timeoutMs: number;
  /** When it was asked for: time spent waiting for a helper counts towards its timeout. */
  queuedAt: number;
  resolve: (r: HelperResult) => void;
  reject: (e: Error) => void;
}

/**
 * Up to `size` helpers, each given one command at a time, in the order asked. Another helper is
 * started only when every one running has had its command for SPILL_MS: a command that hangs holds up
 * the others for that long at most, while commands that come together (most do, briefly) cost no
 * more helpers (each is a fork of the router to start, about 10 ms of its CPU).
 */
export class HelperPool {
  private readonly slots: Slot[] = [];
  private readonly queue: Queued[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** Why the helper cannot run, once it was found so: every command is then refused with it. */
  unavailable: HelperUnavailable | null = null;

  constructor(
    private readonly path: string,
    private readonly size = 4,
  ) {}

  run(argv: string[], input: string | undefined, timeoutMs: number): Promise<HelperResult> {
    return new Promise((resolve, reject) => {
      if (this.unavailable) return reject(this.unavailable);
      this.queue.push({ argv, input, timeoutMs, queuedAt: Date.now(), resolve, reject });
      this.pump();
    });
  }

  /** Helpers started so far. */
  get started(): number {
    return this.slots.length;
  }

  end(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const q of this.queue.splice(0)) q.reject(new Error('the command helper ended'));
    for (const s of this.slots) s.helper.end();
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const now = Date.now();
      let slot = this.slots.find((s) => s.since === null);
      if (!slot && this.slots.length < this.size) {
        const newest = Math.max(...this.slots.map((s) => s.since!));
        if (this.slots.length === 0 || now - newest >= SPILL_MS) {
          slot = { helper: new ExecHelper(this.path), since: null };
          this.slots.push(slot);
        } else if (!this.timer) {
          this.timer = setTimeout(
            () => {
              this.timer = null;
              this.pump();
            },
            SPILL_MS - (now - newest),
          );
          this.timer.unref(); // the commands in flight keep the process alive
        }
      }
      if (!slot) return; // an answer, or the timer, pumps again
      const q = this.queue.shift()!;
      const left = q.timeoutMs - (now - q.queuedAt);
      if (left <= 0) {
        // Never started with no time left (it would be killed part way through).
        q.reject(
          new Error(`waited ${Math.round((now - q.queuedAt) / 1000)} s for a command helper: ${q.argv[0]} not started`),
        );
        continue;
      }
      const s = slot;
      s.since = now;
      s.helper
        .run(q.argv, q.input, left)
        .then(q.resolve, (err: Error) => {
          if (err instanceof HelperUnavailable && !this.unavailable) {
            this.unavailable = err;
            for (const w of this.queue.splice(0)) w.reject(err);
          }
          q.reject(err);
        })
        .finally(() => {
          s.since = null;
          this.pump();
        });
    }
  }
}

let shared: HelperPool | null | undefined;

/**
 * The process's helpers, or null when there are none (commands are then started directly): not
 * built, turned off, or found unable to run (said once on stderr).
 */
export function execHelper(): HelperPool | null {
  if (shared === undefined) {
    const path = helperPath();
    shared = path ? new HelperPool(path) : null;
  }
  if (shared?.unavailable) {
    process.emitWarning(`${shared.unavailable.message}; starting commands directly`);
    shared = null;
  }
  return shared;
}
