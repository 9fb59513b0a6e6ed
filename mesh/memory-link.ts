// In-memory connections between meshes in one process, for tests and the
// scale benchmark. Delivery is asynchronous and ordered, like a socket.
import { randomBytes } from 'node:crypto';
import type { MeshLink, RemoteIdentity } from './link.js';
import type { Mesh } from './mesh.js';

class MemoryLink implements MeshLink {
  onMessage: ((message: Uint8Array) => void) | null = null;
  onClose: ((reason: string) => void) | null = null;
  peer!: MemoryLink;
  private queue: Uint8Array[] = [];
  private scheduled = false;
  closed = false;

  constructor(
    readonly remote: RemoteIdentity,
    readonly outbound: boolean,
    readonly connUid: bigint,
    readonly remoteAddr: string,
    readonly direct: boolean,
  ) {}

  send(message: Uint8Array): void {
    if (this.closed) return;
    // Copy: the sender may reuse its buffer, as with a real socket.
    this.peer.queue.push(Uint8Array.from(message));
    this.peer.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const batch = this.queue;
      this.queue = [];
      for (const m of batch) {
        if (this.closed) return;
        this.onMessage?.(m);
      }
    });
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    const peer = this.peer;
    // Like a socket: both ends learn that the connection is gone.
    queueMicrotask(() => this.onClose?.(reason));
    setImmediate(() => {
      if (!peer.closed) {
        peer.closed = true;
        peer.onClose?.(`closed by peer: ${reason}`);
      }
    });
  }
}

function identity(m: Mesh): RemoteIdentity {
  return { name: m.name, nickname: m.config.nickname, uid: m.config.uid, port: m.config.port };
}

/** Connects two meshes as if `a` had dialled `b`. Returns whether both accepted. */
export function connectInMemory(a: Mesh, b: Mesh, direct = true): boolean {
  const connUid = randomBytes(8).readBigUInt64BE() ^ randomBytes(8).readBigUInt64BE();
  // Addresses shaped like real ones (an IP from the name, the ephemeral port for the inbound side), so byte counts are realistic.
  const ip = (m: Mesh) => `198.18.${parseInt(m.name.slice(12, 14), 16)}.${parseInt(m.name.slice(15, 17), 16)}`;
  const addrA = `${ip(a)}:${40000 + Math.floor(Math.random() * 20000)}`;
  const addrB = `${ip(b)}:${b.config.port}`;
  const la = new MemoryLink(identity(b), true, connUid, addrB, direct);
  const lb = new MemoryLink(identity(a), false, connUid, addrA, false);
  la.peer = lb;
  lb.peer = la;
  const okA = a.addConnection(la).ok;
  const okB = b.addConnection(lb).ok;
  return okA && okB;
}
