// The sleeve's path MTU search and path check between two routers, simulated round by round (one
// round a second, as the sleeve's timer runs): probes cross a path that carries packets up to a
// limit (or nothing), acknowledgements cross the mesh. Checked: the search settles within 8 bytes;
// once it has, the acknowledgements stop but for a reminder every 10 s and the hop stays healthy; a
// path that stops is reported within 4-5 s and one that shrinks or grows is searched again; a router of the
// earlier version (every probe acknowledged, nothing of `states`, `every` or `missing`) works as
// before both ways, and after an outage; the races and stalls a review found; malformed
// acknowledgements are refused.
import { describe, expect, it } from 'vitest';
import { PathMtu, type ProbeAck, parseProbeAck } from '../../../datapath/sleeve/path-mtu.js';

const TOP = 1500;

/** The search's promise: at most the path MTU, and within 8 bytes of it. */
function expectWithin8(pmtu: number, limit: number): void {
  expect(pmtu).toBeLessThanOrEqual(limit);
  expect(pmtu).toBeGreaterThan(limit - 8);
}

/** One direction of the underlay: the largest packet it carries (0: nothing). */
interface Path {
  limit: number;
}

/** A router's view of one hop: the real PathMtu, or a router of the earlier version. */
interface End {
  round(now: number): { size: number; inUse: boolean }[];
  onProbe(size: number, inUse: boolean, now: number): void;
  onAck(ack: ProbeAck, now: number): void;
  healthy(now: number): boolean;
  pmtu: number;
}

function current(send: (ack: ProbeAck) => boolean): End & { path: PathMtu } {
  const path = new PathMtu(TOP, send);
  return {
    path,
    round: (now) => {
      const r = path.round(now);
      path.poll(now);
      return r.probes;
    },
    onProbe: (size, inUse, now) => path.onProbe(size, inUse, now),
    onAck: (ack, now) => path.onAck(ack, now),
    healthy: (now) => path.healthy(now),
    get pmtu() {
      return path.pmtu;
    },
  };
}

/** The earlier version, as it was: acknowledges every probe with {probe}; counts its own unacknowledged probes lost after 2.5 s. */
function earlier(send: (ack: ProbeAck) => boolean): End & { received: ProbeAck[] } {
  let pmtu = 576;
  let failedAt = TOP + 1;
  let ackAt = 0;
  const pending = new Map<number, number>();
  const received: ProbeAck[] = [];
  return {
    received,
    round(now) {
      for (const [size, at] of pending) {
        if (now - at < 2500) continue;
        pending.delete(size);
        if (size <= pmtu) {
          pmtu = 576;
          failedAt = Math.max(size, 577);
        } else failedAt = Math.min(failedAt, size);
      }
      const sizes = new Set([TOP, pmtu]);
      if (failedAt - pmtu > 8) sizes.add(Math.floor((pmtu + failedAt) / 2));
      for (const s of sizes) if (!pending.has(s)) pending.set(s, now);
      return [...sizes].map((size) => ({ size, inUse: false }));
    },
    onProbe: (size) => void send({ probe: size }),
    onAck(ack, now) {
      received.push(ack);
      // It read only `probe`, a number.
      const probe = (ack as { probe?: unknown }).probe;
      if (typeof probe !== 'number' || !pending.has(probe)) return;
      for (const s of pending.keys()) if (s <= probe) pending.delete(s);
      pmtu = Math.max(pmtu, probe);
      if (failedAt <= pmtu) failedAt = TOP + 1;
      ackAt = now;
    },
    healthy: (now) => now - ackAt < 3500,
    get pmtu() {
      return pmtu;
    },
  };
}

/** Two routers a and b, each an End for the other; `ab` carries a's probes to b, `ba` the other way. */
function pair(makeA = current, makeB: typeof current | typeof earlier = current) {
  let now = 1_000_000;
  const acks = { toA: [] as ProbeAck[], toB: [] as ProbeAck[] };
  const meshUp = { value: true };
  const a = makeA((ack) => {
    if (!meshUp.value) return false;
    acks.toB.push(ack);
    b.onAck(ack, now);
    return true;
  });
  const b: End = makeB((ack) => {
    if (!meshUp.value) return false;
    acks.toA.push(ack);
    a.onAck(ack, now);
    return true;
  });
  const ab: Path = { limit: 1400 };
  const ba: Path = { limit: 1400 };
  /** One second: each side sends its probes, the path delivers what fits. */
  const round = () => {
    now += 1000;
    const fromA = a.round(now);
    const fromB = b.round(now);
    for (const p of fromA) if (p.size <= ab.limit) b.onProbe(p.size, p.inUse, now);
    for (const p of fromB) if (p.size <= ba.limit) a.onProbe(p.size, p.inUse, now);
  };
  return { a, b, ab, ba, acks, meshUp, round, now: () => now };
}

describe('sleeve path MTU and path check', () => {
  it('settles within 8 bytes of the path MTU, then acknowledges by change: a reminder every 10 s, healthy throughout', () => {
    const s = pair();
    for (let i = 0; i < 15; i++) s.round();
    for (const end of [s.a, s.b]) {
      expectWithin8(end.pmtu, 1400);
      expect(end.healthy(s.now())).toBe(true);
    }
    s.acks.toA.length = s.acks.toB.length = 0;
    for (let i = 0; i < 40; i++) {
      s.round();
      expect(s.a.healthy(s.now())).toBe(true);
      expect(s.b.healthy(s.now())).toBe(true);
    }
    // 40 rounds of one probe that arrives (the size in use) and one that does not (1500): 4 reminders
    // each way, where every probe was acknowledged before (40).
    expect(s.acks.toA.length).toBe(4);
    expect(s.acks.toB.length).toBe(4);
    expect(s.acks.toA.every((ack) => 'probe' in ack && ack.every === 10_000)).toBe(true);
    // The path grows to the underlay MTU: found, and still quiet after.
    s.ab.limit = s.ba.limit = TOP;
    for (let i = 0; i < 5; i++) s.round();
    expect(s.a.pmtu).toBe(TOP);
    s.acks.toA.length = 0;
    for (let i = 0; i < 20; i++) s.round();
    expect(s.acks.toA.length).toBeLessThanOrEqual(2);
    expect(s.a.healthy(s.now())).toBe(true);
  });

  it('reports a path that stops within 5 s, recovers when it returns, and searches again when it shrinks', () => {
    const s = pair();
    s.ab.limit = s.ba.limit = TOP;
    for (let i = 0; i < 20; i++) s.round();
    expect(s.a.pmtu).toBe(TOP);
    // a's probes stop reaching b.
    s.ab.limit = 0;
    let rounds = 0;
    while (s.a.healthy(s.now()) && rounds < 30) {
      s.round();
      rounds++;
    }
    expect(rounds).toBeLessThanOrEqual(5);
    expect(s.acks.toA.at(-1)).toEqual({ missing: TOP, every: 10_000 });
    expect(s.a.pmtu).toBe(576);
    expect(s.b.healthy(s.now())).toBe(true);
    // Missing is said again each reminder period while it lasts, and the hop stays unhealthy.
    const before = s.acks.toA.length;
    for (let i = 0; i < 12; i++) {
      s.round();
      expect(s.a.healthy(s.now())).toBe(false);
    }
    expect(s.acks.toA.slice(before).filter((ack) => 'missing' in ack).length).toBe(1);
    // Back, but smaller than before: healthy again at once, and the search finds the new size.
    s.ab.limit = 1300;
    s.round();
    expect(s.a.healthy(s.now())).toBe(true);
    for (let i = 0; i < 15; i++) s.round();
    expectWithin8(s.a.pmtu, 1300);
    // A shrink with no gap: the size in use stops arriving, which is reported, and the search goes below.
    s.ab.limit = 1000;
    for (let i = 0; i < 25; i++) s.round();
    expectWithin8(s.a.pmtu, 1000);
    expect(s.a.healthy(s.now())).toBe(true);
  });

  it('finds a path that grew to less than the underlay MTU within about a minute (failures are forgotten)', () => {
    const s = pair();
    s.ab.limit = 1300;
    for (let i = 0; i < 15; i++) s.round();
    expect(s.a.pmtu).toBeGreaterThan(1292);
    s.ab.limit = 1400;
    for (let i = 0; i < 75; i++) s.round();
    expectWithin8(s.a.pmtu, 1400);
    expect(s.a.healthy(s.now())).toBe(true);
  });

  it('tells nothing as told when the mesh had no route, and tells it when it has', () => {
    const s = pair();
    s.ab.limit = s.ba.limit = TOP;
    for (let i = 0; i < 20; i++) s.round();
    // a's path to b stops while the mesh has no route: b cannot say so.
    s.meshUp.value = false;
    s.ab.limit = 0;
    for (let i = 0; i < 6; i++) s.round();
    s.meshUp.value = true;
    s.acks.toA.length = 0;
    s.round();
    expect(s.acks.toA).toContainEqual({ missing: TOP, every: 10_000 });
    expect(s.a.healthy(s.now())).toBe(false);
  });

  it('with a router of the earlier version: every probe acknowledged both ways, no states, unhealthy 4 s after its acknowledgements stop', () => {
    const s = pair(current, earlier);
    for (let i = 0; i < 15; i++) s.round();
    for (const end of [s.a, s.b]) {
      expectWithin8(end.pmtu, 1400);
    }
    s.acks.toA.length = s.acks.toB.length = 0;
    for (let i = 0; i < 20; i++) {
      s.round();
      expect(s.a.healthy(s.now())).toBe(true);
      expect(s.b.healthy(s.now())).toBe(true);
    }
    // Each side's one arriving probe a round acknowledged each round.
    expect(s.acks.toA.length).toBe(20);
    expect(s.acks.toB.length).toBe(20);
    const old = s.b as ReturnType<typeof earlier>;
    expect(old.received.every((ack) => 'probe' in ack && ack.every === undefined)).toBe(true);
    expect(old.received.some((ack) => 'missing' in ack)).toBe(false);
    // The earlier router's acknowledgements stop (its probes still arrive): the short window applies.
    s.ab.limit = 0;
    let rounds = 0;
    while (s.a.healthy(s.now()) && rounds < 30) {
      s.round();
      rounds++;
    }
    expect(rounds).toBeLessThanOrEqual(4);
  });

  it('after an outage with a router of the earlier version, finds the path MTU again within seconds', () => {
    const s = pair(current, earlier);
    for (let i = 0; i < 15; i++) s.round();
    expectWithin8(s.a.pmtu, 1400);
    s.ab.limit = 0;
    for (let i = 0; i < 10; i++) s.round();
    expect(s.a.healthy(s.now())).toBe(false);
    s.ab.limit = 1400;
    for (let i = 0; i < 12; i++) s.round();
    expectWithin8(s.a.pmtu, 1400);
  });

  it('says missing when the size in use it last saw came before it read states, and the sender searches from its own size', () => {
    let t = 1_000_000;
    const toA: ProbeAck[] = [];
    const b = new PathMtu(TOP, (ack) => (toA.push(ack), true));
    // a's probe at its size in use arrives before b knows that a reads states: acknowledged as every probe is.
    b.onProbe(576, true, t);
    expect(toA).toEqual([{ probe: 576, states: true }]);
    // a's acknowledgement of b's own probes says it reads states; then a's 1500 arrives, a new size.
    b.onAck({ probe: 576, every: 10_000 }, t);
    b.onProbe(1500, false, (t += 1000));
    expect(toA.at(-1)).toEqual({ probe: 1500, every: 10_000 });
    // a now uses 1500, which no longer gets through: nothing at a's size in use arrives.
    for (let i = 0; i < 4; i++) b.poll((t += 1000));
    expect(toA.at(-1)).toEqual({ missing: 576, every: 10_000 });
    // The sender at 1500 hears it: its own size failed; it searches between the floor and 1500.
    let now = 2_000_000;
    const a = new PathMtu(TOP, () => true);
    a.round(now);
    a.onAck({ probe: 1500, every: 10_000 }, now);
    expect(a.pmtu).toBe(1500);
    expect(a.onAck({ missing: 576, every: 10_000 }, (now += 500))).toBe(true);
    expect(a.pmtu).toBe(576);
    expect(a.healthy(now)).toBe(false);
    expect(a.round((now += 500)).probes.map((p) => p.size)).toEqual([1500, 576, 1038]);
  });

  it('does not call probes missing after a stall of its own, before it has read them', () => {
    let t = 1_000_000;
    const toA: ProbeAck[] = [];
    const b = new PathMtu(TOP, (ack) => (toA.push(ack), true));
    b.onAck({ probe: 576, every: 10_000 }, t);
    b.poll(t);
    b.onProbe(1500, true, (t += 1000));
    b.poll(t);
    // The event loop stood still for 6 s: the timer runs before the probes that came meanwhile are read.
    b.poll((t += 6000));
    expect(toA.some((ack) => 'missing' in ack)).toBe(false);
    b.onProbe(1500, true, t);
    b.poll((t += 1000));
    expect(toA.some((ack) => 'missing' in ack)).toBe(false);
    // Probes that really stop are reported.
    for (let i = 0; i < 4; i++) b.poll((t += 1000));
    expect(toA.at(-1)).toEqual({ missing: 1500, every: 10_000 });
    // Short probes (forged: the search never sends one) are not acknowledged.
    const count = toA.length;
    b.onProbe(41, true, t);
    b.onProbe(41, false, t);
    expect(toA.length).toBe(count);
  });

  it('refuses malformed acknowledgements, and reads well-formed ones', () => {
    const bad: unknown[] = [
      null,
      7,
      [],
      { probe: '1500' },
      { probe: 1500.5 },
      { probe: 0 },
      { probe: 70_000 },
      { probe: 1500, every: 50 },
      { probe: 1500, every: 600_000 },
      { probe: 1500, states: false },
      { missing: 1500 },
      { missing: 1500, every: 10_000, probe: 1500 },
      { missing: -1, every: 10_000 },
    ];
    for (const v of bad) expect(() => parseProbeAck(v), JSON.stringify(v)).toThrow(/malformed/);
    expect(parseProbeAck({ probe: 1500 })).toEqual({ probe: 1500 });
    expect(parseProbeAck({ probe: 1500, states: true, extra: 1 })).toEqual({ probe: 1500, states: true });
    expect(parseProbeAck({ probe: 1400, every: 10_000 })).toEqual({ probe: 1400, every: 10_000 });
    expect(parseProbeAck({ missing: 1400, every: 10_000 })).toEqual({ missing: 1400, every: 10_000 });
  });
});
