// A small OVSDB client (RFC 7047: JSON-RPC over a stream socket): transact and
// echo, with the errors the server returns turned into messages that say which
// operation failed and why. The server sends JSON values back to back with no
// delimiter, so the reader splits the stream by bracket depth outside strings.
import net from 'node:net';

const DB = 'Open_vSwitch';
const TIMEOUT_MS = 10_000;

export class OvsdbError extends Error {}

/** Splits a stream of concatenated JSON texts into whole texts. */
export class JsonSplitter {
  private buf = '';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private scanned = 0;

  push(chunk: string): string[] {
    this.buf += chunk;
    const out: string[] = [];
    let start = 0;
    for (let i = this.scanned; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === '"') this.inString = false;
        continue;
      }
      if (c === '"') this.inString = true;
      else if (c === '{' || c === '[') this.depth++;
      else if (c === '}' || c === ']') {
        this.depth--;
        if (this.depth < 0) throw new OvsdbError('OVSDB sent unbalanced JSON');
        if (this.depth === 0) {
          out.push(this.buf.slice(start, i + 1).trim());
          start = i + 1;
        }
      }
    }
    this.buf = this.buf.slice(start);
    this.scanned = this.buf.length;
    if (this.buf.length > 64 * 1024 * 1024) throw new OvsdbError('OVSDB sent a JSON text over 64 MiB');
    return out;
  }
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** `unix:PATH` or `tcp:HOST:PORT` to socket options. */
export function parseOvsdbTarget(target: string): { path: string } | { host: string; port: number } {
  if (target.startsWith('unix:') && target.length > 5) return { path: target.slice(5) };
  const m = /^tcp:([^:]+):(\d+)$/.exec(target);
  if (m) return { host: m[1], port: Number(m[2]) };
  throw new OvsdbError(`--ovsdb ${target}: expected unix:PATH or tcp:HOST:PORT`);
}

export class OvsdbClient {
  private socket: net.Socket | null = null;
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: Json) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  private readonly splitter = new JsonSplitter();

  constructor(readonly target: string) {}

  async connect(): Promise<void> {
    const opts = parseOvsdbTarget(this.target);
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(opts as net.NetConnectOpts);
      const t = setTimeout(() => {
        s.destroy();
        reject(new OvsdbError(`ovsdb-server does not answer at ${this.target}`));
      }, 5000);
      s.once('connect', () => {
        clearTimeout(t);
        resolve();
      });
      s.once('error', (err) => {
        clearTimeout(t);
        reject(
          new OvsdbError(
            `cannot reach ovsdb-server at ${this.target} (${err.message}): is Open vSwitch running? (--ovsdb says where)`,
          ),
        );
      });
      this.socket = s;
    });
    this.socket!.setEncoding('utf8');
    this.socket!.on('data', (d: string) => this.onData(d));
    this.socket!.on('error', () => this.failAll('the OVSDB connection failed'));
    this.socket!.on('close', () => this.failAll('ovsdb-server closed the connection'));
  }

  close(): void {
    this.socket?.destroy();
    this.failAll('closed');
  }

  private failAll(reason: string): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new OvsdbError(reason));
    }
    this.pending.clear();
  }

  private onData(d: string): void {
    let texts: string[];
    try {
      texts = this.splitter.push(d);
    } catch (err) {
      this.socket?.destroy();
      this.failAll((err as Error).message);
      return;
    }
    for (const t of texts) {
      let msg: { id?: Json; method?: string; result?: Json; error?: Json; params?: Json };
      try {
        msg = JSON.parse(t) as typeof msg;
      } catch {
        continue;
      }
      if (msg.method === 'echo') {
        this.socket?.write(JSON.stringify({ id: msg.id ?? null, result: msg.params ?? [], error: null }));
        continue;
      }
      const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
      if (!p) continue;
      this.pending.delete(msg.id as number);
      clearTimeout(p.timer);
      if (msg.error) p.reject(new OvsdbError(`OVSDB: ${JSON.stringify(msg.error)}`));
      else p.resolve(msg.result ?? null);
    }
  }

  private call(method: string, params: Json[]): Promise<Json> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new OvsdbError(`ovsdb-server did not answer ${method} within ${TIMEOUT_MS} ms`));
      }, TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.socket!.write(JSON.stringify({ id, method, params }));
    });
  }

  /**
   * Runs operations as one transaction. A failed operation fails the whole transaction (OVSDB
   * rolls it back): the error names the operation, its table, and what the server said.
   */
  async transact(ops: Record<string, Json>[]): Promise<Json[]> {
    const result = (await this.call('transact', [DB, ...ops])) as Json[];
    if (!Array.isArray(result)) throw new OvsdbError('OVSDB answered a transaction with something that is not a list');
    result.forEach((r, i) => {
      const e = r && typeof r === 'object' && !Array.isArray(r) ? r.error : undefined;
      if (e) {
        const op = ops[i];
        const where = op ? `${String(op.op)}${op.table ? ` on ${String(op.table)}` : ''}` : 'the transaction';
        const details = (r as Record<string, Json>).details;
        throw new OvsdbError(`OVSDB refused ${where}: ${String(e)}${details ? ` (${String(details)})` : ''}`);
      }
    });
    return result;
  }

  /** Rows of a table (where: OVSDB conditions), with these columns. */
  async select(table: string, columns: string[], where: Json[] = []): Promise<Record<string, Json>[]> {
    const [r] = await this.transact([{ op: 'select', table, where, columns }]);
    return ((r as { rows?: Record<string, Json>[] }).rows ?? []) as Record<string, Json>[];
  }
}

// ---- OVSDB's JSON forms of sets, maps and references

export const uuid = (u: string): Json => ['uuid', u];
export const named = (n: string): Json => ['named-uuid', n];
export const set = (items: Json[]): Json => ['set', items];
export const map = (m: Record<string, string>): Json => ['map', Object.entries(m)];

/** The members of an OVSDB set value (a single value is a set of one). */
export function setItems(v: Json | undefined): Json[] {
  if (Array.isArray(v) && v[0] === 'set') return v[1] as Json[];
  return v === undefined || v === null ? [] : [v];
}

/** An OVSDB map value as an object. */
export function mapObject(v: Json | undefined): Record<string, string> {
  if (Array.isArray(v) && v[0] === 'map')
    return Object.fromEntries((v[1] as [string, Json][]).map(([k, x]) => [k, String(x)]));
  return {};
}

/** The uuid of a ["uuid", U] value. */
export function uuidOf(v: Json | undefined): string | null {
  return Array.isArray(v) && v[0] === 'uuid' ? String(v[1]) : null;
}

export type { Json };
