// Which overlay carries traffic to each remote peer: a pure function of what the
// router knows now (connections, routes, heartbeats, encryption) and what it chose
// before, so every branch can be tested without root (test/unit/datapath). The
// datapath calls it every second and on every change, and programs the result.
import type { PeerName } from '../mesh/index.js';

/** How traffic to a peer travels ('fastdp': VXLAN, by the kernel device or by OVS). */
export type Overlay = 'fastdp' | 'sleeve' | 'none';

/** How long a peer that was on fastdp keeps it after its connection goes, before a relay is tried. */
export const FASTDP_HOLD_MS = 5_000;

/**
 * How long a peer that was on fastdp when its connection went keeps fastdp once it is connected again
 * (its router restarted), until its heartbeats can be judged: the kernel never stopped delivering.
 */
export const REJOIN_HOLD_MS = 4_000;

export interface OverlayInput {
  /** This peer (never chosen for). */
  self: PeerName;
  now: number;
  /** Peers with an established direct connection. */
  connected: ReadonlySet<PeerName>;
  /** Peers reachable over established connections (directly or relayed). */
  routed: ReadonlySet<PeerName>;
  /** Peers with containers in the endpoint table. */
  withEndpoints: ReadonlySet<PeerName>;
  /** Whether the peer's underlay address is known (now, or from before its connection went). */
  hasAddress: (peer: PeerName) => boolean;
  /** Whether the kernel VXLAN path may be used at all (false: --no-fastdp). */
  fastdp: boolean;
  /** Whether the sleeve runs. */
  sleeve: boolean;
  /** Whether traffic with the peer must be encrypted (never VXLAN then: no kernel encryption here). */
  encrypted: (peer: PeerName) => boolean;
  /** Whether the peer acknowledges our VXLAN heartbeats. */
  healthy: (peer: PeerName) => boolean;
  /** Shortly after a restart: whether the kernel was already sending to this peer over VXLAN. */
  presumedFast: (peer: PeerName) => boolean;
  /** What was chosen last time. */
  previous: ReadonlyMap<PeerName, Overlay>;
  /** When each peer that was on fastdp lost its connection. */
  disconnectedAt: ReadonlyMap<PeerName, number>;
  /** When each of those peers was connected again. */
  reconnectedAt?: ReadonlyMap<PeerName, number>;
  /** Whether the peer's underlay address is the one it had at the last choice (a peer back at another gets no hold). */
  sameAddress?: (peer: PeerName) => boolean;
}

export interface OverlayChoice {
  overlays: Map<PeerName, Overlay>;
  disconnectedAt: Map<PeerName, number>;
  reconnectedAt: Map<PeerName, number>;
}

/**
 * Each remote peer's overlay: fastdp for direct peers whose VXLAN heartbeats are acknowledged (and
 * that need no encryption), or presumed so shortly after a restart, ours or theirs (REJOIN_HOLD_MS);
 * else the sleeve, directly or
 * relayed; a peer whose connection just went keeps fastdp for FASTDP_HOLD_MS (its router restarting:
 * the other peers' topology may still show a route to it, and a relay through them would not work);
 * a gone peer that was on fastdp and has no sleeve route keeps it (its kernel still delivers); without
 * a sleeve, fastdp is tried for any peer it may work for; else none.
 */
export function chooseOverlays(i: OverlayInput): OverlayChoice {
  const peers = new Set<PeerName>([...i.connected, ...i.routed, ...i.withEndpoints]);
  peers.delete(i.self);
  const overlays = new Map<PeerName, Overlay>();
  const disconnectedAt = new Map(i.disconnectedAt);
  const reconnectedAt = new Map(i.reconnectedAt ?? []);
  for (const p of peers) {
    const prev = i.previous.get(p);
    const connected = i.connected.has(p);
    const fastOk = i.fastdp && i.hasAddress(p) && !i.encrypted(p);
    if (connected && disconnectedAt.has(p) && (i.sameAddress?.(p) ?? true)) reconnectedAt.set(p, i.now);
    if (connected) disconnectedAt.delete(p);
    // Lost again while held on fastdp unconfirmed (no heartbeat answered since it came back): no
    // hold next time either, or a flapping connection would keep a broken VXLAN path for ever.
    else if (prev === 'fastdp' && !disconnectedAt.has(p) && !reconnectedAt.has(p)) disconnectedAt.set(p, i.now);
    const at = reconnectedAt.get(p);
    if (at !== undefined && (!connected || i.healthy(p) || i.now - at >= REJOIN_HOLD_MS)) reconnectedAt.delete(p);
    const rejoined = reconnectedAt.has(p) && prev === 'fastdp';
    const justLost = !connected && i.now - (disconnectedAt.get(p) ?? 0) < FASTDP_HOLD_MS;
    let o: Overlay = 'none';
    if (connected && fastOk && (i.healthy(p) || i.presumedFast(p) || rejoined)) o = 'fastdp';
    else if (justLost && prev === 'fastdp' && fastOk) o = 'fastdp';
    else if (i.sleeve && (connected || i.routed.has(p))) o = 'sleeve';
    else if (!connected && prev === 'fastdp' && fastOk) o = 'fastdp';
    else if (!i.sleeve && fastOk && (connected || i.withEndpoints.has(p))) o = 'fastdp'; // nothing better to try
    overlays.set(p, o);
  }
  // Peers no longer anywhere: their disconnection time goes with them.
  for (const p of disconnectedAt.keys()) if (!peers.has(p)) disconnectedAt.delete(p);
  for (const p of reconnectedAt.keys()) if (!peers.has(p)) reconnectedAt.delete(p);
  return { overlays, disconnectedAt, reconnectedAt };
}

/** Whether two choices differ. */
export function overlaysChanged(a: ReadonlyMap<PeerName, Overlay>, b: ReadonlyMap<PeerName, Overlay>): boolean {
  return a.size !== b.size || [...b].some(([p, o]) => a.get(p) !== o);
}
