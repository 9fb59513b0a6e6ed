// The overlay choice per peer (datapath/overlay.ts), without root: properties
// over random meshes, and the restart hold as a sequence of decisions.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  FASTDP_HOLD_MS,
  REJOIN_HOLD_MS,
  chooseOverlays,
  type Overlay,
  type OverlayChoice,
  type OverlayInput,
} from '../../../datapath/overlay.js';

const PEERS = ['02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03', '02:00:00:00:00:04', '02:00:00:00:00:05'];
const SELF = '02:00:00:00:00:00';
const subset = fc.subarray([SELF, ...PEERS]);
const overlay = fc.constantFrom<Overlay>('fastdp', 'sleeve', 'none');

const input = fc
  .record({
    connected: subset,
    routed: subset,
    withEndpoints: subset,
    addressed: subset,
    encrypted: subset,
    healthy: subset,
    presumed: subset,
    fastdp: fc.boolean(),
    sleeve: fc.boolean(),
    previous: fc.array(fc.tuple(fc.constantFrom(...PEERS), overlay), { maxLength: 5 }),
    lost: fc.array(fc.tuple(fc.constantFrom(...PEERS), fc.integer({ min: 0, max: 20_000 })), { maxLength: 5 }),
  })
  .map((r): OverlayInput => ({
    self: SELF,
    now: 100_000,
    connected: new Set(r.connected),
    routed: new Set([...r.routed, ...r.connected]),
    withEndpoints: new Set(r.withEndpoints),
    hasAddress: (p) => r.addressed.includes(p) || r.connected.includes(p),
    fastdp: r.fastdp,
    sleeve: r.sleeve,
    encrypted: (p) => r.encrypted.includes(p),
    healthy: (p) => r.healthy.includes(p),
    presumedFast: (p) => r.presumed.includes(p),
    previous: new Map(r.previous),
    disconnectedAt: new Map(r.lost.map(([p, ago]) => [p, 100_000 - ago])),
  }));

/**
 * One peer's choices over time, each step fed the last one's state (as the datapath does every
 * second); `routedWhenLost`: still reachable through another peer while its connection is gone.
 */
function sequence(p: string, routedWhenLost: boolean) {
  let state: OverlayChoice = { overlays: new Map(), disconnectedAt: new Map(), reconnectedAt: new Map() };
  const step = (now: number, connected: boolean, healthy: boolean, sameAddress = true) => {
    state = chooseOverlays({
      self: SELF,
      now,
      connected: new Set(connected ? [p] : []),
      routed: new Set(connected || routedWhenLost ? [p] : []),
      withEndpoints: new Set([p]),
      hasAddress: () => true,
      fastdp: true,
      sleeve: true,
      encrypted: () => false,
      healthy: () => healthy,
      presumedFast: () => false,
      previous: state.overlays,
      disconnectedAt: state.disconnectedAt,
      reconnectedAt: state.reconnectedAt,
      sameAddress: () => sameAddress,
    });
    return state.overlays.get(p);
  };
  return { step, state: () => state };
}

describe('the overlay choice', () => {
  it('never puts a peer on fastdp that must be encrypted, has no address, or when fastdp is off; never on a sleeve that does not run, or that does not reach it', () => {
    fc.assert(
      fc.property(input, (i) => {
        const { overlays } = chooseOverlays(i);
        expect(overlays.has(i.self)).toBe(false);
        for (const [p, o] of overlays) {
          if (o === 'fastdp') {
            expect(i.fastdp).toBe(true);
            expect(i.encrypted(p)).toBe(false);
            expect(i.hasAddress(p)).toBe(true);
          }
          if (o === 'sleeve') {
            expect(i.sleeve).toBe(true);
            expect(i.connected.has(p) || i.routed.has(p)).toBe(true);
          }
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('a connected peer goes on fastdp when its heartbeats are answered (or presumed after a restart, its or ours), else on the sleeve when one runs', () => {
    fc.assert(
      fc.property(input, (i) => {
        const { overlays } = chooseOverlays(i);
        for (const p of i.connected) {
          if (p === i.self) continue;
          const fastOk = i.fastdp && !i.encrypted(p);
          // Back from a lost connection while on fastdp: held there until its heartbeats can tell.
          const rejoined = i.disconnectedAt.has(p) && i.previous.get(p) === 'fastdp';
          if (fastOk && (i.healthy(p) || i.presumedFast(p) || rejoined)) expect(overlays.get(p)).toBe('fastdp');
          else if (i.sleeve) expect(overlays.get(p)).toBe('sleeve');
          else if (fastOk)
            expect(overlays.get(p)).toBe('fastdp'); // nothing better to try
          else expect(overlays.get(p)).toBe('none');
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('every peer it knows of gets a choice, and the same input gives the same choice', () => {
    fc.assert(
      fc.property(input, (i) => {
        const a = chooseOverlays(i);
        const b = chooseOverlays(i);
        expect([...a.overlays]).toEqual([...b.overlays]);
        const known = new Set([...i.connected, ...i.routed, ...i.withEndpoints]);
        known.delete(i.self);
        expect(new Set(a.overlays.keys())).toEqual(known);
      }),
      { numRuns: 500 },
    );
  });

  it('a peer on fastdp whose connection goes keeps fastdp for the hold, then moves to the sleeve relay; back on fastdp when it returns', () => {
    const p = PEERS[0];
    const { step, state } = sequence(p, true);
    expect(step(0, true, false)).toBe('sleeve'); // heartbeats not answered yet
    expect(step(1000, true, true)).toBe('fastdp');
    expect(step(2000, false, false)).toBe('fastdp'); // its router restarting: the kernel still delivers
    expect(state().disconnectedAt.get(p)).toBe(2000);
    expect(step(2000 + FASTDP_HOLD_MS - 1, false, false)).toBe('fastdp');
    expect(step(2000 + FASTDP_HOLD_MS, false, false)).toBe('sleeve'); // held long enough: relay
    expect(step(9000, true, true)).toBe('fastdp');
    expect(state().disconnectedAt.has(p)).toBe(false);
  });

  it('a peer on fastdp whose router restarts stays on fastdp when it connects again, until its heartbeats are judged (the hold), then by them', () => {
    const p = PEERS[2];
    const { step, state } = sequence(p, false);
    expect(step(0, true, true)).toBe('fastdp');
    expect(step(1000, false, false)).toBe('fastdp'); // restarting
    // Connected again, no heartbeat answered yet: still fastdp (before, the sleeve for a moment, and
    // its router's sleeve was not up yet).
    expect(step(1500, true, false)).toBe('fastdp');
    expect(step(1500 + REJOIN_HOLD_MS - 1, true, false)).toBe('fastdp');
    expect(step(1500 + REJOIN_HOLD_MS, true, false)).toBe('sleeve'); // heartbeats never came back
    expect(state().reconnectedAt.has(p)).toBe(false);
    expect(step(9000, true, true)).toBe('fastdp');
    // A connection that flaps while VXLAN stays broken: lost again during its hold (unconfirmed), it
    // gets no new hold when it comes back, and goes to the sleeve.
    expect(step(20_000, true, true)).toBe('fastdp');
    expect(step(21_000, false, false)).toBe('fastdp');
    expect(step(22_000, true, false)).toBe('fastdp'); // held
    expect(step(23_000, false, false)).toBe('fastdp'); // gone again: the kernel may still deliver
    expect(step(24_000, true, false)).toBe('sleeve'); // no second hold
    // Back at another underlay address: nothing was delivering there, no hold.
    expect(step(25_000, true, true)).toBe('fastdp');
    expect(step(26_000, false, false)).toBe('fastdp');
    expect(step(27_000, true, false, false)).toBe('sleeve');
    // A peer that was on the sleeve when its connection went gets no hold.
    expect(step(30_000, true, false)).toBe('sleeve');
    expect(step(31_000, false, false)).toBe('none'); // no route to it at all meanwhile
    expect(step(32_000, true, false)).toBe('sleeve');
  });

  it('a gone peer that was on fastdp and has no other route keeps fastdp (its kernel still delivers); without a sleeve, fastdp is tried', () => {
    const p = PEERS[1];
    const base: OverlayInput = {
      self: SELF,
      now: 60_000,
      connected: new Set(),
      routed: new Set(),
      withEndpoints: new Set([p]),
      hasAddress: () => true,
      fastdp: true,
      sleeve: true,
      encrypted: () => false,
      healthy: () => false,
      presumedFast: () => false,
      previous: new Map([[p, 'fastdp']]),
      disconnectedAt: new Map([[p, 0]]),
    };
    expect(chooseOverlays(base).overlays.get(p)).toBe('fastdp');
    expect(chooseOverlays({ ...base, previous: new Map() }).overlays.get(p)).toBe('none');
    expect(chooseOverlays({ ...base, previous: new Map(), sleeve: false }).overlays.get(p)).toBe('fastdp');
  });
});
