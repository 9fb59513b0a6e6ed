// The sleeve's path MTU search and path check for one hop, both ends of it. As the sender, each
// second we send the peer DF-marked probes (UDP, unsealed) at the underlay MTU, at the size in use
// (the largest acknowledged), and halfway to the smallest that failed; the peer acknowledges over
// the mesh. As the receiver, we acknowledge the peer's probes.
//
// A probe at a new size is acknowledged at once (the search needs it). The probe at the size in use
// (the sender marks it) says only that the path still works: to a peer that reads states, the
// receiver acknowledges it when it starts or changes, reminds every `every` ms, and says "missing"
// once such probes stop for 3.5 s; the sender counts the hop healthy while the last word is an
// acknowledgement under 2 x `every` + 0.5 s old. So an idle hop carries one acknowledgement each way
// every 10 s, not one a second. A peer learns that we read states from our own acknowledgements
// (`states` or `every` in them); until then, and with routers of earlier versions (which acknowledge
// every probe and refuse nothing but malformed acknowledgements), every probe is acknowledged and
// an unacknowledged probe counts as lost after 2.5 s, as before.
import { PMTU_FLOOR } from './packet.js';

export const PROBE_INTERVAL_MS = 1000;
/** With a peer that acknowledges every probe: healthy while one was acknowledged this recently. */
const HEALTHY_MS = 3 * PROBE_INTERVAL_MS + 500;
/**
 * A probe that needs an acknowledgement counts as lost when none came this long after it was first
 * sent. Longer than one round: acknowledgements travel over the mesh's TCP connection, which a busy
 * host can hold up for a second, and a late acknowledgement must not send the search back to the floor.
 */
const PROBE_LOST_MS = 2500;
/** A size that failed is tried again after this long (the search starts above the size in use again). */
const FAILURE_KEPT_MS = 60_000;
/** As the receiver: the peer's probes at its size in use count as stopped after this long without one. */
const MISSING_MS = 3 * PROBE_INTERVAL_MS + 500;
/** How often a peer that reads states hears that its probes still arrive (by default). */
const REMIND_MS = 10_000;
/** The reminder periods a peer may announce: a longer one would let one acknowledgement count for minutes. */
const EVERY_MIN_MS = 100;
const EVERY_MAX_MS = 10_000;
/** Probe sizes (IP packets) an acknowledgement may name. */
const SIZE_MAX = 65_535;

/** What goes over the mesh, from the receiver of probes to their sender. */
export type ProbeAck =
  /** A probe of `size` arrived; `states`: every probe is acknowledged, and we read `every` and `missing`. */
  | { probe: number; states?: true; every?: number }
  /** Probes at the sender's size in use stopped arriving. */
  | { missing: number; every: number };

/** Checks an acknowledgement from the network; throws on anything malformed. */
export function parseProbeAck(v: unknown): ProbeAck {
  const bad = () => new Error('sleeve probe acknowledgement is malformed');
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad();
  const o = v as Record<string, unknown>;
  // Any size a datagram can have: routers of the earlier version acknowledge whatever arrived whole, even
  // a short probe someone forged (an acknowledgement of a size we did not send moves nothing).
  const size = (x: unknown) => typeof x === 'number' && Number.isInteger(x) && x >= 1 && x <= SIZE_MAX;
  const every = (x: unknown) => typeof x === 'number' && Number.isInteger(x) && x >= EVERY_MIN_MS && x <= EVERY_MAX_MS;
  if ('missing' in o) {
    if (!size(o.missing) || !every(o.every) || 'probe' in o) throw bad();
    return { missing: o.missing as number, every: o.every as number };
  }
  if (!size(o.probe)) throw bad();
  if (o.states !== undefined && o.states !== true) throw bad();
  if (o.every !== undefined && !every(o.every)) throw bad();
  return {
    probe: o.probe as number,
    ...(o.states ? { states: true as const } : {}),
    ...(o.every !== undefined ? { every: o.every as number } : {}),
  };
}

export interface Probe {
  size: number;
  /** The size in use: the peer needs to acknowledge it only when something changes. */
  inUse: boolean;
}

export class PathMtu {
  /** Largest probe size (IP packet) the peer acknowledged: the path MTU we use (never below the floor). */
  pmtu = PMTU_FLOOR;
  /** Smallest probe size that went unacknowledged: the search stays below it. */
  private failedAt: number;
  private failedSince = 0;
  /** Probe sizes waiting for an acknowledgement, with when each was first sent. */
  private readonly pending = new Map<number, number>();
  /** The peer's last acknowledgement of our probes. */
  ackAt = 0;
  /** The peer's reminder period when it acknowledges our size in use by change; 0: it acknowledges every probe. */
  private peerEvery = 0;
  /** When the peer said our probes at the size in use stopped arriving (0: not since its last acknowledgement). */
  private missingAt = 0;

  /** The peer reads states: its probes at its size in use are acknowledged by change. */
  private readsStates = false;
  /** The last probe at the peer's size in use that arrived: its size and when. */
  private inUseSize = 0;
  private inUseAt = 0;
  private polledAt = 0;
  /** What we last told the peer about its size in use. */
  private told: { size: number; at: number; missing: boolean } | null = null;

  /**
   * `top`: the underlay MTU, the largest probe. `send`: sends an acknowledgement to the peer over the
   * mesh; false when it could not (no route), so nothing counts as told.
   */
  constructor(
    private readonly top: number,
    private readonly send: (ack: ProbeAck) => boolean,
    private readonly every = REMIND_MS,
  ) {
    this.failedAt = top + 1;
  }

  // ---- the sender's side

  /**
   * This round's probes; first counts the ones that went unacknowledged too long as lost (the size in
   * use among them sends the search back to the floor). Returns whether the size in use changed.
   */
  round(now: number): { probes: Probe[]; changed: boolean } {
    let changed = false;
    for (const [size, sentAt] of this.pending) {
      if (now - sentAt < PROBE_LOST_MS) continue;
      this.pending.delete(size);
      if (size <= this.pmtu) changed = this.lost(size, now) || changed;
      // A larger size lost while the path carries nothing says nothing about sizes: counted, it would
      // walk the search down to the floor during an outage, with no way back up below the underlay MTU.
      else if (this.healthy(now)) this.failed(size, now);
    }
    // Failures are forgotten after a while, so a path that grew (to less than the underlay MTU) is found.
    if (this.failedAt <= this.top && now - this.failedSince >= FAILURE_KEPT_MS) this.failedAt = this.top + 1;
    const sizes = new Set<number>([this.top, this.pmtu]);
    if (this.failedAt - this.pmtu > 8) sizes.add(Math.floor((this.pmtu + this.failedAt) / 2));
    const probes = [...sizes].map((size) => ({ size, inUse: size === this.pmtu }));
    for (const p of probes) {
      // The size in use waits for an acknowledgement only from a peer that acknowledges every probe.
      if (p.inUse && this.peerEvery) continue;
      // A size sent again while unanswered keeps its first time: any copy's acknowledgement counts.
      if (!this.pending.has(p.size)) this.pending.set(p.size, now);
    }
    return { probes, changed };
  }

  /** The size in use failed: back to the floor, searching below it. Returns whether the size in use changed. */
  private lost(size: number, now: number): boolean {
    const was = this.pmtu;
    this.pmtu = PMTU_FLOOR;
    this.failedAt = Math.max(size, PMTU_FLOOR + 1);
    this.failedSince = now;
    return was !== this.pmtu;
  }

  private failed(size: number, now: number): void {
    if (size >= this.failedAt) return;
    this.failedAt = size;
    this.failedSince = now;
  }

  /** An acknowledgement from the peer. Returns whether the size in use changed. */
  onAck(ack: ProbeAck, now: number): boolean {
    // A peer that says `states` or `every` reads states: its probes are acknowledged by change from now on.
    if (('states' in ack && ack.states) || ack.every !== undefined) this.readsStates = true;
    if ('missing' in ack) {
      this.peerEvery = ack.every;
      this.missingAt = now;
      // It names the size in use it saw last; ours may have grown since, and it is ours that fails. One
      // naming a size above ours is about a size we left already.
      return ack.missing <= this.pmtu ? this.lost(this.pmtu, now) : false;
    }
    this.peerEvery = ack.every ?? 0;
    // Only what we are waiting for, or the size in use (a reminder): an old acknowledgement moves nothing.
    if (!this.pending.has(ack.probe) && ack.probe !== this.pmtu) return false;
    // The first word after an outage: what failed during it (down to the floor) says nothing about sizes.
    if (!this.healthy(now)) this.failedAt = this.top + 1;
    // A size that got through vouches for every smaller one still waiting.
    for (const size of this.pending.keys()) if (size <= ack.probe) this.pending.delete(size);
    const was = this.pmtu;
    this.pmtu = Math.max(this.pmtu, ack.probe);
    // The path grew past an old failure: search above again.
    if (this.failedAt <= this.pmtu) this.failedAt = this.top + 1;
    this.ackAt = now;
    this.missingAt = 0;
    return was !== this.pmtu;
  }

  /** Healthy while the peer's last word is an acknowledgement recent enough for how often it speaks. */
  healthy(now: number): boolean {
    const window = this.peerEvery ? 2 * this.peerEvery + 500 : HEALTHY_MS;
    return this.missingAt === 0 && now - this.ackAt < window;
  }

  /** Why not healthy, for `weft status`; `where` is the peer's underlay address and port. */
  reason(now: number, where: string): string {
    const secs = (t: number) => Math.round((now - t) / 1000);
    if (this.missingAt)
      return `UDP probes to ${where} not arriving at the peer (it said so ${secs(this.missingAt)}s ago)`;
    return `no UDP probe to ${where} acknowledged ${this.ackAt ? `for ${secs(this.ackAt)}s` : 'yet'}`;
  }

  // ---- the receiver's side

  /** A probe of `size` from the peer arrived whole; `inUse`: the peer marked it as its size in use. */
  onProbe(size: number, inUse: boolean, now: number): void {
    // Only sizes a search sends: an acknowledgement of anything else would be refused by the peer.
    if (size < PMTU_FLOOR || size > SIZE_MAX) return;
    if (inUse) {
      this.inUseSize = size;
      this.inUseAt = now;
    }
    if (!this.readsStates) {
      this.send({ probe: size, states: true });
      return;
    }
    if (!inUse) {
      this.send({ probe: size, every: this.every });
      return;
    }
    const t = this.told;
    if (t && t.size === size && !t.missing && now - t.at < this.every) return;
    if (this.send({ probe: size, every: this.every })) this.told = { size, at: now, missing: false };
  }

  /** Once a round: tells the peer when its probes at its size in use stopped arriving (again each period while they stay away). */
  poll(now: number): void {
    // After a stall of our own, the probes that came meanwhile are still waiting to be read: not missing.
    const stalled = now - this.polledAt > 2 * PROBE_INTERVAL_MS;
    this.polledAt = now;
    const t = this.told;
    if (stalled || !this.readsStates || !this.inUseAt || now - this.inUseAt < MISSING_MS) return;
    if (t?.missing && now - t.at < this.every) return;
    if (this.send({ missing: this.inUseSize, every: this.every }))
      this.told = { size: this.inUseSize, at: now, missing: true };
  }

  /** The hop moved (another address or port): probes under way there are not waited for. */
  moved(): this {
    this.pending.clear();
    return this;
  }
}
