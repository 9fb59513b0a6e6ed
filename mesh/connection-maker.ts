// Keeps the peer connected to its targets: the addresses a user gave (direct)
// and, with discovery, addresses of peers learnt from the topology. Retries
// with randomised exponential backoff, and says for each target what it is
// doing and why.
import { hostOf, parseAddress } from '../net/host-port.js';
import type { Mesh, MeshConnection } from './mesh.js';
import type { PeerName } from './peer-name.js';

type TargetState = 'waiting' | 'connecting' | 'retrying' | 'connected' | 'failed';

export interface Target {
  addr: string;
  host: string;
  port: number;
  direct: boolean;
  state: TargetState;
  /** The peer found at this address, once known. */
  peer?: PeerName;
  lastError?: string;
  nextTryAt: number;
  interval: number;
  attempts: number;
  /** A target that can never work (it is ourselves, or a name collision): not retried. */
  permanent?: boolean;
}

export interface ConnectionMakerOptions {
  defaultPort: number;
  discovery: boolean;
  connLimit: number;
  initialBackoff?: number;
  maxBackoff?: number;
}

export type Dialler = (host: string, port: number, opts: { direct: boolean; expect?: PeerName }) => Promise<void>;

export class ConnectionMaker {
  readonly targets = new Map<string, Target>();
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly initialBackoff: number;
  private readonly maxBackoff: number;
  private inFlight = 0;

  constructor(
    private readonly mesh: Mesh,
    private readonly dial: Dialler,
    private readonly opts: ConnectionMakerOptions,
  ) {
    this.initialBackoff = opts.initialBackoff ?? 2000;
    this.maxBackoff = opts.maxBackoff ?? 6 * 60_000;
    mesh.on('connection-added', (c: MeshConnection) => this.onConnectionAdded(c));
    mesh.on('connection-removed', (c: MeshConnection, reason: string) => this.onConnectionRemoved(c, reason));
    mesh.on('topology', () => this.discover());
  }

  /** Adds user-given targets (with `replace`, they become the whole direct set). Throws before changing anything if one is invalid. */
  connect(addresses: string[], replace = false): void {
    const parsed = addresses.map((a) => parseAddress(a, this.opts.defaultPort));
    if (replace) {
      for (const [addr, t] of this.targets) if (t.direct) this.targets.delete(addr);
    }
    for (const p of parsed) {
      const t = this.targets.get(p.addr);
      if (t) {
        t.direct = true;
        t.nextTryAt = Date.now();
        t.interval = this.initialBackoff;
        t.permanent = false;
      } else {
        this.targets.set(p.addr, this.newTarget(p, true));
      }
    }
    this.schedule(0);
  }

  /** Removes targets; existing connections stay up (as in Weave). */
  forget(addresses: string[]): string[] {
    const removed: string[] = [];
    for (const a of addresses) {
      const { addr } = parseAddress(a, this.opts.defaultPort);
      if (this.targets.delete(addr)) removed.push(addr);
    }
    return removed;
  }

  directTargets(): string[] {
    return [...this.targets.values()].filter((t) => t.direct).map((t) => t.addr);
  }

  private newTarget(p: { host: string; port: number; addr: string }, direct: boolean, peer?: PeerName): Target {
    return { ...p, direct, state: 'waiting', peer, nextTryAt: Date.now(), interval: this.initialBackoff, attempts: 0 };
  }

  private schedule(delay: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), Math.max(0, delay));
    this.timer.unref();
  }

  private isConnectedTo(t: Target): boolean {
    if (t.peer && this.mesh.connections.has(t.peer)) return true;
    // An inbound connection from the same host whose listen port is the target's port is the same peer.
    for (const c of this.mesh.connections.values()) {
      if (hostOf(c.link.remoteAddr) === t.host && c.link.remote.port === t.port) {
        t.peer = c.name;
        return true;
      }
    }
    return false;
  }

  private tick(): void {
    this.timer = null;
    const now = Date.now();
    let next = Infinity;
    for (const t of this.targets.values()) {
      if (t.state === 'connecting' || t.state === 'retrying') continue;
      if (this.isConnectedTo(t)) {
        t.state = 'connected';
        continue;
      }
      if (t.state === 'connected') t.state = 'waiting';
      if (t.permanent) continue;
      if (t.nextTryAt > now) {
        next = Math.min(next, t.nextTryAt);
        continue;
      }
      const limit = this.opts.connLimit;
      if (!t.direct && limit > 0 && this.mesh.connections.size + this.inFlight >= limit) {
        t.state = 'waiting';
        t.lastError = `connection limit (${limit}) reached`;
        t.nextTryAt = now + this.initialBackoff;
        next = Math.min(next, t.nextTryAt);
        continue;
      }
      this.attempt(t);
    }
    if (next !== Infinity) this.schedule(next - now);
  }

  private attempt(t: Target): void {
    t.state = t.lastError ? 'retrying' : 'connecting';
    t.attempts++;
    this.inFlight++;
    this.dial(t.host, t.port, { direct: t.direct, expect: t.direct ? undefined : t.peer })
      .then(() => {
        t.state = 'connected';
        t.lastError = undefined;
      })
      .catch((err: Error) => {
        const msg = err.message;
        t.lastError = msg;
        t.state = 'failed';
        if (/connected to ourself|peer name collision/.test(msg)) {
          t.permanent = true;
        } else {
          this.backoff(t);
        }
      })
      .finally(() => {
        this.inFlight--;
        this.schedule(0);
      });
  }

  private backoff(t: Target): void {
    const i = t.interval;
    t.nextTryAt = Date.now() + i / 2 + Math.random() * i;
    t.interval = Math.min(this.maxBackoff, i * 1.5);
  }

  private onConnectionAdded(c: MeshConnection): void {
    for (const t of this.targets.values()) {
      if (t.peer === c.name || (hostOf(c.link.remoteAddr) === t.host && c.link.remote.port === t.port)) {
        t.peer = c.name;
        if (t.state !== 'connecting' && t.state !== 'retrying') t.state = 'connected';
      }
    }
  }

  private onConnectionRemoved(c: MeshConnection, reason: string): void {
    if (this.stopped) return;
    const lived = Date.now() - c.since;
    for (const t of this.targets.values()) {
      if (t.peer !== c.name || t.state !== 'connected') continue;
      if (this.mesh.connections.has(c.name)) continue; // replaced by another connection
      t.state = 'failed';
      t.lastError = c.closeReason ?? reason;
      if (lived > 10_000) {
        // It was up for a while: try again soon, from the start of the backoff.
        t.interval = this.initialBackoff;
        t.nextTryAt = Date.now() + Math.random() * 500;
      } else {
        this.backoff(t);
      }
    }
    this.schedule(0);
  }

  /** With discovery, every peer some other peer is connected to, and we are not, becomes a target. */
  private discover(): void {
    if (!this.opts.discovery || this.stopped) return;
    const wanted = new Map<string, { host: string; port: number; peer: PeerName }>();
    for (const e of this.mesh.topology.entries.values()) {
      if (e.name === this.mesh.name) continue;
      for (const c of e.connections) {
        if (c.peer === this.mesh.name || this.mesh.connections.has(c.peer)) continue;
        const remote = this.mesh.topology.get(c.peer);
        if (!remote) continue;
        let host: string;
        let port: number;
        try {
          // An outbound connection's address is the remote's listen address; an inbound one's port is ephemeral.
          host = hostOf(c.addr);
          port = c.outbound ? Number(c.addr.slice(c.addr.lastIndexOf(':') + 1)) : remote.port;
          const p = parseAddress(host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, port);
          wanted.set(p.addr, { host: p.host, port: p.port, peer: c.peer });
        } catch {
          continue; // an address we cannot dial (not a TCP address)
        }
      }
    }
    let added = false;
    for (const [addr, w] of wanted) {
      if (!this.targets.has(addr)) {
        this.targets.set(addr, this.newTarget({ addr, host: w.host, port: w.port }, false, w.peer));
        added = true;
      }
    }
    for (const [addr, t] of this.targets) {
      if (!t.direct && !wanted.has(addr) && t.state !== 'connecting' && t.state !== 'retrying')
        this.targets.delete(addr);
    }
    if (added) this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
