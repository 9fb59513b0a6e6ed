// One long-lived `nft -j -t -i` for the router's frequent nftables work: reads
// (heartbeat counters every second, the firewall check, policy
// counters at each status) and small updates (a container port's binding at
// each attach and detach). A process per command cost a fork of the router and
// a start of nft each time (about 7 ms, and 15-40 ms of an attach when the
// machine is busy); a line to this one costs about 2 ms.
//
// In interactive mode nft reads one line at a time: a line with several
// commands (separated by ';') is one transaction, as a file given to `nft -f`
// is. A `list` answers with one line of JSON (-j; -t: rules without the
// possibly thousands of set elements); an error is a few lines starting with
// "Error:". Standard error is merged into standard output (in order), and each
// request is followed by `list tables`, whose answer marks where the request's
// output ends. One request is in flight at a time. If nft hangs or dies, the
// request fails and the next one starts a new process.
import { type ChildProcessByStdio, spawn } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { killChild, unrefChild } from './child.js';
import { CommandError, nft } from './command.js';

/** What `nft -j` prints: a list of objects, each with one key (table, chain, rule, set ...). */
export interface NftJson {
  nftables: Record<string, unknown>[];
}

const END_MARK = 'list tables';
/** Requests one process answers before the next request starts another (about an hour of polling). */
const RECYCLE_AFTER = 5000;

type NftProcess = ChildProcessByStdio<Writable, Readable, null>;

interface Pending {
  kind: 'list' | 'apply';
  /** The line sent (for messages). */
  line: string;
  timeoutMs: number;
  resolve: (v: NftJson | null) => void;
  reject: (e: Error) => void;
  /** A list's answer, once read. */
  answer?: NftJson;
  /** nft's error text, once one started. */
  error?: string;
}

export class NftSession {
  private child: NftProcess | null = null;
  private readonly queue: Pending[] = [];
  private inFlight: Pending | null = null;
  private timer: NodeJS.Timeout | null = null;
  private out = '';
  /** Requests sent to the running process. */
  private sent = 0;

  constructor(
    private readonly timeoutMs = 5000,
    /** How to start nft (tests: inside a namespace, or a stand-in). */
    private readonly argv: string[] = ['nft'],
  ) {}

  /** Runs one `list ...` command; resolves with its JSON, rejects with nft's error. */
  list(command: string): Promise<NftJson> {
    if (!/^list [\w .@-]+$/.test(command))
      return Promise.reject(new CommandError(`not an nft list command: ${command}`));
    return this.send('list', command, this.timeoutMs) as Promise<NftJson>;
  }

  /**
   * Applies an nft script (what `nft -f` takes, one command or block per line) as one transaction;
   * rejects with nft's error, having changed nothing. A script with a comment (#) is refused: on one
   * line, it would hide the rest.
   */
  async apply(script: string, timeoutMs = 20_000): Promise<void> {
    if (script.includes('#')) throw new CommandError('nft script with a comment: not sent on one line');
    const line = script
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .join(' ; ');
    if (line === '') return;
    await this.send('apply', line, timeoutMs);
  }

  /** Ends the process and fails what waits (the router stops); a later request starts another. */
  end(): void {
    for (const p of this.queue.splice(0)) p.reject(new CommandError('nft session ended'));
    this.stop(new CommandError('nft session ended'));
  }

  private send(kind: Pending['kind'], line: string, timeoutMs: number): Promise<NftJson | null> {
    return new Promise((resolve, reject) => {
      this.queue.push({ kind, line, timeoutMs, resolve, reject });
      this.next();
    });
  }

  private next(): void {
    if (this.inFlight || this.queue.length === 0) return;
    const p = this.queue.shift()!;
    let child: NftProcess;
    try {
      child = this.process();
    } catch (err) {
      p.reject(err as Error);
      this.next();
      return;
    }
    this.inFlight = p;
    this.timer = setTimeout(
      () => this.stop(new CommandError(`nft ${brief(p.line)}: no answer in ${p.timeoutMs / 1000} s`)),
      p.timeoutMs,
    );
    // The timer stays referenced while a request is out: it keeps the loop alive for the answer.
    child.stdin.write(`${p.line}\n${END_MARK}\n`);
    this.sent++;
  }

  /** One line of nft's output, for the request in flight. */
  private onLine(line: string): void {
    const p = this.inFlight;
    if (!p || !line.trim()) return;
    if (!line.startsWith('{')) {
      // An error: "Error: why", then the command and a marker under the part it means. (Other text,
      // a warning, is no failure.)
      const why = /Error: (.*)/.exec(line);
      if (why && p.error === undefined) p.error = why[1];
      return;
    }
    let json: NftJson;
    try {
      json = JSON.parse(line) as NftJson;
    } catch {
      this.settle(new CommandError(`nft ${brief(p.line)}: unreadable answer`));
      return;
    }
    // A list's own answer comes first (unless it failed); the last JSON line is the end mark's.
    if (p.kind === 'list' && p.answer === undefined && p.error === undefined) p.answer = json;
    else if (!isEndMark(json))
      // Not what `list tables` prints: answers and requests are out of step, and every later answer
      // would be taken for the one before. A fresh process puts them back in step.
      this.stop(
        new CommandError(
          `nft ${brief(p.line)}: answers out of step with requests (its outcome is unknown); nft starts afresh`,
        ),
      );
    else if (p.error !== undefined) this.settle(new CommandError(`nft ${brief(p.line)}: ${p.error}`, 1, p.error));
    else this.settle(p.answer ?? null);
  }

  private settle(result: NftJson | null | Error): void {
    const p = this.inFlight;
    if (!p) return;
    this.inFlight = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    // nft's line editor keeps every line in memory: a fresh process now and then.
    if (this.sent >= RECYCLE_AFTER && this.child) {
      const old = this.child;
      this.child = null;
      old.stdin.end();
    }
    if (result instanceof Error) p.reject(result);
    else p.resolve(result);
    this.next();
  }

  /** The running nft, started when there is none. */
  private process(): NftProcess {
    if (this.child) return this.child;
    // Through sh only to merge standard error into standard output (exec: nft is the process).
    // HOME where nothing is: nft's line editor keeps no history file (it would grow at every exit).
    const child = spawn('sh', ['-c', 'exec "$@" -j -t -i 2>&1', 'sh', ...this.argv], {
      stdio: ['pipe', 'pipe', 'ignore'],
      env: { ...process.env, HOME: '/nonexistent' },
    });
    this.child = child;
    this.sent = 0;
    child.stdin.on('error', () => undefined); // a process that could not start or died: 'exit' says so
    this.out = '';
    child.stdout.setEncoding('utf8');
    // A process that was given up on may still write: only the current one answers.
    child.stdout.on('data', (d: string) => {
      if (this.child !== child) return;
      this.out += d;
      let nl: number;
      while ((nl = this.out.indexOf('\n')) >= 0) {
        const line = this.out.slice(0, nl);
        this.out = this.out.slice(nl + 1);
        this.onLine(line);
      }
    });
    child.on('error', (e: Error) => {
      if (this.child === child) this.stop(new CommandError(`nft: ${e.message}`));
    });
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      // sh's "exec" fails with 127 when there is no nft.
      this.stop(
        code === 127
          ? new CommandError('nft not found: install nftables (Debian: apt-get install nftables)')
          : new CommandError(`nft ended (${signal ?? `exit code ${code}`})`),
      );
    });
    // A session never keeps the process alive, and nft ends with its standard input when we do.
    unrefChild(child);
    return child;
  }

  private stop(err: Error): void {
    const child = this.child;
    this.child = null;
    if (child) killChild(child);
    this.settle(err);
  }
}

/** What `list tables` answers: nft's metainfo and tables, nothing else. */
function isEndMark(j: NftJson): boolean {
  return (
    Array.isArray(j?.nftables) &&
    j.nftables.every((o) => typeof o === 'object' && o !== null && ('metainfo' in o || 'table' in o))
  );
}

/** A long line shortened for a message. */
function brief(line: string): string {
  return line.length > 120 ? `${line.slice(0, 117)}...` : line;
}

/** The router's session (its process starts at the first request). */
export const nftSession = new NftSession();

/**
 * Applies a small nft script of the router's own namespace as one transaction, through the session
 * (no process; a script with a comment goes to `nft -f`). Large ones (the firewall table with the
 * security groups' sets) go to `nft -f` by the caller: the session does one request at a time, and
 * the heartbeat reads must not wait behind them.
 */
export function nftScript(script: string): Promise<unknown> {
  return script.includes('#') ? nft(['-f', '-'], script) : nftSession.apply(script);
}

/** Objects of one kind (rule, chain, set ...) of one table in a listing. */
export function nftObjects<T>(j: NftJson, kind: string, family?: string, table?: string): T[] {
  const out: T[] = [];
  for (const item of j.nftables) {
    const o = item[kind] as { family?: string; table?: string } | undefined;
    if (!o) continue;
    if (family !== undefined && o.family !== family) continue;
    if (table !== undefined && o.table !== table) continue;
    out.push(o as T);
  }
  return out;
}
