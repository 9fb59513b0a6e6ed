// The gossip channel API. A component (IPAM, DNS, the topology itself) registers
// a named channel with a Gossiper and gets a Gossip handle to send with. The mesh
// never looks inside the payloads.
import type { PeerName } from './peer-name.js';

/** A piece of channel state that can be sent and combined with another piece. */
export interface GossipData {
  encode(): Uint8Array;
  /** Combines two pending updates into one (used to coalesce what waits for a slow link). */
  merge(other: GossipData): GossipData;
}

/** What a component implements to receive on its channel. */
export interface Gossiper {
  /** The complete state: sent where no digest comparison is possible. Null if empty. */
  gossip(): GossipData | null;
  /**
   * Merges an update received from a neighbour. Returns only what was new to us
   * (it is passed on to other neighbours), or null to stop its propagation.
   * Throwing rejects the update; the mesh logs it and does not crash.
   */
  onGossip(update: Uint8Array, from: PeerName): GossipData | null;
  /** A message sent to this peer by `src` with `unicast`. */
  onUnicast?(src: PeerName, payload: Uint8Array): void;
  /** A message sent to every peer by `src` with `broadcast`. */
  onBroadcast?(src: PeerName, payload: Uint8Array): void;
  /** Optional anti-entropy support: a compact summary of the state. */
  digest?(): Uint8Array;
  /**
   * Optional anti-entropy support: given a neighbour's digest, what we hold that
   * it lacks (null if nothing) and whether it holds something we lack.
   */
  compareDigest?(digest: Uint8Array): { update: GossipData | null; remoteHasMore: boolean };
}

/** The handle a component sends with. */
export interface Gossip {
  /** Spreads a local change: to a few neighbours, which pass on what is new to them. */
  gossipUpdate(update: GossipData): void;
  /** Sends to one peer, relayed hop by hop. Returns false when no route is known. */
  unicast(dst: PeerName, payload: Uint8Array): boolean;
  /** Sends to every reachable peer along the broadcast tree. */
  broadcast(payload: Uint8Array): void;
}

/** GossipData over opaque bytes, for channels whose updates need no coalescing logic. */
export class BytesGossipData implements GossipData {
  constructor(readonly bytes: Uint8Array) {}
  encode(): Uint8Array {
    return this.bytes;
  }
  /** Without knowledge of the payload, the newer update replaces the older. */
  merge(other: GossipData): GossipData {
    return other;
  }
}
