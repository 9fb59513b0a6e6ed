import type { PeerName } from './peer-name.js';

/** Who is at the other end of a connection, as its handshake said. */
export interface RemoteIdentity {
  name: PeerName;
  nickname: string;
  uid: string;
  /** The remote's mesh listen port. */
  port: number;
}

/**
 * An authenticated connection to another peer, after the handshake. The mesh
 * sees only this: TCP with encryption in the router, in-memory pipes in tests
 * and benchmarks.
 */
export interface MeshLink {
  readonly remote: RemoteIdentity;
  readonly outbound: boolean;
  /** Same value at both ends (XOR of both sides' random ids): settles duplicates. */
  readonly connUid: bigint;
  /** The remote's address as seen from here, "ip:port". */
  readonly remoteAddr: string;
  /** Dialled because a user asked for this target (never refused for the connection limit). */
  readonly direct: boolean;
  /** Keys for the sleeve's packets to and from this peer, from the handshake (absent on in-memory links). */
  readonly sleeveKeys?: { send: Buffer; receive: Buffer };
  send(message: Uint8Array): void;
  /** Tells the remote why (best effort) and closes. */
  close(reason: string): void;
  onMessage: ((message: Uint8Array) => void) | null;
  onClose: ((reason: string) => void) | null;
}
