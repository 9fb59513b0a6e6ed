// The controller's end of one OpenFlow connection to the switch (OVS listens on
// a unix socket, `punix:`, and weft connects). Requests are matched to replies
// by xid; flow changes go in batches closed by a barrier, so a batch is known
// applied (or failed, with the switch's error) before the next one. Anything
// malformed from the switch closes the connection with the reason; it never
// throws into the router.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import {
  FlowModCommand,
  OpenFlowError,
  decodeMessage,
  encodeMessage,
  messageLength,
  OFPP_ANY,
  OFPTT_ALL,
  type FlowSpec,
  type FlowStats,
  type MatchField,
  type Message,
} from './openflow.js';

const REQUEST_TIMEOUT_MS = 10_000;

interface Pending {
  resolve: (m: Message[]) => void;
  reject: (e: Error) => void;
  parts: Message[];
  timer: NodeJS.Timeout;
}

/** OpenFlow error types and codes that say something to a user (the rest print as numbers). */
function describeError(t: number, c: number): string {
  const types: Record<number, string> = {
    0: 'hello failed',
    1: 'bad request',
    2: 'bad action',
    3: 'bad instruction',
    4: 'bad match',
    5: 'flow_mod failed',
    12: 'table features failed',
  };
  return `${types[t] ?? `error type ${t}`} (code ${c})`;
}

export class OpenFlowConnection extends EventEmitter {
  private socket: net.Socket | null = null;
  private buf: Buffer = Buffer.alloc(0);
  private xid = 1;
  private readonly pending = new Map<number, Pending>();
  /** Errors the switch sent for flow_mods of the batch in flight, by xid. */
  private readonly batchErrors = new Map<number, string>();
  closed = false;
  datapathId = 0n;

  /** Connects, exchanges HELLO and FEATURES; rejects with the reason when the switch is not there. */
  async connect(path: string, timeoutMs = 5000): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(path);
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`no answer on the OpenFlow socket ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve();
      });
      s.once('error', (err) => {
        clearTimeout(t);
        reject(new Error(`cannot connect to the OpenFlow socket ${path}: ${err.message}`));
      });
      this.socket = s;
    });
    const s = this.socket!;
    s.on('data', (d: Buffer) => this.onData(d));
    s.on('error', (err) => this.fail(`OpenFlow connection: ${err.message}`));
    s.on('close', () => this.fail('OpenFlow connection closed by the switch'));
    this.write({ type: 'hello', xid: this.nextXid() });
    const [features] = await this.request({ type: 'features_request', xid: 0 });
    if (features.type === 'features_reply') this.datapathId = features.datapathId;
  }

  close(): void {
    this.fail('closed');
  }

  private fail(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.socket?.destroy();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(reason));
    }
    this.pending.clear();
    if (reason !== 'closed') this.emit('down', reason);
  }

  private nextXid(): number {
    this.xid = (this.xid % 0xfffffff0) + 1;
    return this.xid;
  }

  private write(m: Message): void {
    if (this.closed || !this.socket) throw new Error('the OpenFlow connection is closed');
    this.socket.write(encodeMessage(m));
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    try {
      for (;;) {
        const len = messageLength(this.buf);
        if (len === null || this.buf.length < len) return;
        const raw = this.buf.subarray(0, len);
        this.buf = this.buf.subarray(len);
        this.onMessage(decodeMessage(Buffer.from(raw)));
      }
    } catch (err) {
      const why = err instanceof OpenFlowError ? err.message : String(err);
      this.fail(`malformed OpenFlow message from the switch: ${why}`);
    }
  }

  private onMessage(m: Message): void {
    if (m.type === 'echo_request') {
      this.write({ type: 'echo_reply', xid: m.xid, data: m.data });
      return;
    }
    if (m.type === 'error') {
      const text = describeError(m.errType, m.code);
      const p = this.pending.get(m.xid);
      if (p) {
        this.pending.delete(m.xid);
        clearTimeout(p.timer);
        p.reject(new Error(`the switch refused the request: ${text}`));
      } else {
        // Errors for flow changes, collected by apply(); bounded, should a switch send errors for xids of nothing.
        if (this.batchErrors.size > 10_000) this.batchErrors.clear();
        this.batchErrors.set(m.xid, text);
      }
      return;
    }
    const p = this.pending.get(m.xid);
    if (!p) return; // port status and the like: weft reads ports from OVSDB
    p.parts.push(m);
    if (m.type === 'flow_stats_reply' && m.more) return;
    this.pending.delete(m.xid);
    clearTimeout(p.timer);
    p.resolve(p.parts);
  }

  /** Sends a request and resolves with its reply (every part of a multipart reply). */
  request(m: Message): Promise<Message[]> {
    const xid = this.nextXid();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(xid);
        reject(new Error(`the switch did not answer a ${m.type} within ${REQUEST_TIMEOUT_MS} ms`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(xid, { resolve, reject, parts: [], timer });
      try {
        this.write({ ...m, xid } as Message);
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(xid);
        reject(err as Error);
      }
    });
  }

  /** Every flow in the switch whose cookie matches (cookie & mask). */
  async flows(cookie = 0n, cookieMask = 0n, match: MatchField[] = []): Promise<FlowStats[]> {
    const parts = await this.request({
      type: 'flow_stats_request',
      xid: 0,
      tableId: OFPTT_ALL,
      cookie,
      cookieMask,
      match,
    });
    return parts.flatMap((p) => (p.type === 'flow_stats_reply' ? p.flows : []));
  }

  /**
   * Applies deletions (strict: exactly that match and priority), then additions, then waits for
   * the barrier: resolves once the switch has applied all of them, rejects with its first error.
   */
  async apply(remove: FlowSpec[], add: FlowSpec[]): Promise<void> {
    if (remove.length === 0 && add.length === 0) return;
    const xids: number[] = [];
    for (const f of remove) {
      const xid = this.nextXid();
      xids.push(xid);
      this.write({
        type: 'flow_mod',
        xid,
        command: FlowModCommand.DeleteStrict,
        cookieMask: 0n,
        outPort: OFPP_ANY,
        flags: 0,
        flow: { ...f, actions: [] },
      });
    }
    for (const f of add) {
      const xid = this.nextXid();
      xids.push(xid);
      this.write({
        type: 'flow_mod',
        xid,
        command: FlowModCommand.Add,
        cookieMask: 0n,
        outPort: OFPP_ANY,
        flags: 0,
        flow: f,
      });
    }
    await this.request({ type: 'barrier_request', xid: 0 });
    const errors = xids.map((x) => this.batchErrors.get(x)).filter((e): e is string => e !== undefined);
    for (const x of xids) this.batchErrors.delete(x);
    if (errors.length > 0) throw new Error(`the switch refused ${errors.length} flow change(s): ${errors[0]}`);
  }
}
