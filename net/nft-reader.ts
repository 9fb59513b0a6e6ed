// One long-lived `nft -j -t -i` for the router's frequent reads of nftables
// (heartbeat counters every second, the firewall check every 5 s, policy
// counters at each status): a process per read cost a fork of the router and
// a start of nft each time, most of an idle router's CPU. In interactive mode
// nft reads commands from standard input one line at a time and answers each
// `list` with one line of JSON on standard output, or an error on standard
// error; one command is in flight at a time, so an answer belongs to the
// command before it. -t: terse, rules without the (possibly thousands of)
// set elements. If nft hangs or dies, the read fails and the next one starts
// a new process.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { unrefChild } from './child.js';
import { CommandError } from './command.js';

/** What `nft -j` prints: a list of objects, each with one key (table, chain, rule, set ...). */
export interface NftJson {
  nftables: Record<string, unknown>[];
}

interface Pending {
  command: string;
  resolve: (v: NftJson) => void;
  reject: (e: Error) => void;
}

export class NftReader {
  private child: ChildProcessWithoutNullStreams | null = null;
  private readonly queue: Pending[] = [];
  private inFlight: Pending | null = null;
  private timer: NodeJS.Timeout | null = null;
  private out = '';

  constructor(
    private readonly timeoutMs = 5000,
    /** How to start nft (tests: inside a namespace, or a stand-in). */
    private readonly argv: string[] = ['nft'],
  ) {}

  /** Runs one `list ...` command; resolves with its JSON, rejects with nft's error. */
  list(command: string): Promise<NftJson> {
    if (!/^list [\w .@-]+$/.test(command))
      return Promise.reject(new CommandError(`not an nft list command: ${command}`));
    return new Promise((resolve, reject) => {
      this.queue.push({ command, resolve, reject });
      this.next();
    });
  }

  /** Ends the process and fails what waits (the router stops); a later read starts another. */
  end(): void {
    for (const p of this.queue.splice(0)) p.reject(new CommandError('nft reader ended'));
    this.stop(new CommandError('nft reader ended'));
  }

  private next(): void {
    if (this.inFlight || this.queue.length === 0) return;
    const p = this.queue.shift()!;
    let child: ChildProcessWithoutNullStreams;
    try {
      child = this.process();
    } catch (err) {
      p.reject(err as Error);
      this.next();
      return;
    }
    this.inFlight = p;
    this.timer = setTimeout(
      () => this.stop(new CommandError(`nft ${p.command}: no answer in ${this.timeoutMs / 1000} s`)),
      this.timeoutMs,
    );
    // The timer stays referenced while a command is out: it keeps the loop alive for the answer.
    child.stdin.write(`${p.command}\n`);
  }

  private settle(result: NftJson | Error): void {
    const p = this.inFlight;
    if (!p) return;
    this.inFlight = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (result instanceof Error) p.reject(result);
    else p.resolve(result);
    this.next();
  }

  /** The running nft, started when there is none. */
  private process(): ChildProcessWithoutNullStreams {
    if (this.child) return this.child;
    const child = spawn(this.argv[0], [...this.argv.slice(1), '-j', '-t', '-i'], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    this.out = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    // A process that was given up on may still write: only the current one answers.
    child.stdout.on('data', (d: string) => {
      if (this.child !== child) return;
      this.out += d;
      let nl: number;
      while ((nl = this.out.indexOf('\n')) >= 0) {
        const line = this.out.slice(0, nl);
        this.out = this.out.slice(nl + 1);
        if (!line.trim()) continue;
        try {
          this.settle(JSON.parse(line) as NftJson);
        } catch {
          this.settle(new CommandError(`nft ${this.inFlight?.command}: unreadable answer`));
        }
      }
    });
    // An error is several lines (message, the command, a marker); its first carries "Error:".
    child.stderr.on('data', (d: string) => {
      const m = /Error: ([^\n]*)/.exec(d);
      if (m && this.inFlight && this.child === child)
        this.settle(new CommandError(`nft ${this.inFlight.command}: ${m[1]}`, 1, d));
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (this.child !== child) return;
      const err =
        e.code === 'ENOENT'
          ? new CommandError('nft not found: install nftables (Debian: apt-get install nftables)')
          : new CommandError(`nft: ${e.message}`);
      this.stop(err);
    });
    child.on('exit', (code, signal) => {
      if (this.child === child) this.stop(new CommandError(`nft ended (${signal ?? `exit code ${code}`})`));
    });
    // A reader never keeps the process alive, and nft ends with its standard input when we do.
    unrefChild(child);
    return child;
  }

  private stop(err: Error): void {
    const child = this.child;
    this.child = null;
    if (child) {
      child.stdin.destroy();
      child.kill('SIGKILL');
    }
    this.settle(err);
  }
}

/** The router's reader (its process starts at the first read). */
export const nftReader = new NftReader();

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
