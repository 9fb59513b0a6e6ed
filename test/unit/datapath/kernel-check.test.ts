// When the datapath's check of the kernel runs: soon after a notification (a burst folded into one),
// not sooner than the gap after the last, at the backstop without any, and every poll without
// notifications, after a failed check, or once a watch failed.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { KernelCheck, type CheckResult, type KernelCheckTimings } from '../../../datapath/kernel-check.js';
import type { NetlinkWatch } from '../../../native/index.js';

const ok: CheckResult = { repaired: false, failed: false };
const repaired: CheckResult = { repaired: true, failed: false };
const failedCheck: CheckResult = { repaired: false, failed: true };

const timings: KernelCheckTimings = { pollMs: 5_000, backstopMs: 30_000, settleMs: 200, gapMs: 2_000 };

class FakeWatch implements NetlinkWatch {
  closed = false;
  unrefed = false;
  failed = false;
  close() {
    this.closed = true;
  }
  unref() {
    this.unrefed = true;
  }
  stats() {
    return { messages: 0, overruns: 0, ignored: 0, failed: this.failed, lastError: this.failed ? 'poll: EBADF' : null };
  }
}

/** Every KernelCheck made, stopped after each test (the shared ticker outlives the fake timers). */
const made: KernelCheck[] = [];

function setup(opts: { watches?: boolean; result?: () => CheckResult; takesMs?: number } = {}) {
  const runs: number[] = [];
  const lost: string[] = [];
  let notify: () => void = () => undefined;
  const watch = new FakeWatch();
  const check = new KernelCheck(
    async () => {
      runs.push(performance.now());
      if (opts.takesMs) await new Promise((r) => setTimeout(r, opts.takesMs));
      return opts.result?.() ?? ok;
    },
    timings,
    (onChange) => {
      notify = onChange;
      return opts.watches === false ? null : [watch];
    },
    (why) => lost.push(why),
  );
  made.push(check);
  const t0 = performance.now();
  check.start();
  return { check, runs: () => runs.map((t) => Math.round(t - t0)), notify: () => notify(), watch, lost };
}

describe('the kernel check', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance'] });
  });
  afterEach(() => {
    for (const c of made.splice(0)) c.stop();
    vi.useRealTimers();
  });

  it('runs soon after a notification, one check for a burst, and at the backstop when nothing is heard', async () => {
    const { check, runs, notify, watch } = setup();
    expect(check.watching).toBe(true);
    expect(watch.unrefed).toBe(true);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(runs()).toEqual([]);
    for (let i = 0; i < 5; i++) notify();
    await vi.advanceTimersByTimeAsync(199);
    expect(runs()).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(runs()).toEqual([1_200]);
    // Quiet: the timer's ticks (every 5 s) pass it by until 30 s after the last check.
    await vi.advanceTimersByTimeAsync(28_000);
    expect(runs()).toEqual([1_200]);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(runs()).toEqual([1_200, 30_000]);
    expect(check.stats).toEqual({ checks: 2, notified: 5 });
  });

  it('waits for the gap after the last check ended (its own repairs notify too), and after a check under way', async () => {
    const { runs, notify } = setup({ takesMs: 500 });
    notify();
    await vi.advanceTimersByTimeAsync(300);
    expect(runs()).toEqual([200]);
    notify(); // at 300, during the check (it ends at 700): the gap runs to 2700
    await vi.advanceTimersByTimeAsync(2_300);
    expect(runs()).toEqual([200]);
    await vi.advanceTimersByTimeAsync(100);
    expect(runs()).toEqual([200, 2_700]);
    // Long after: the settle time only.
    await vi.advanceTimersByTimeAsync(10_000);
    notify();
    await vi.advanceTimersByTimeAsync(200);
    expect(runs()).toEqual([200, 2_700, 12_900]);
  });

  it('waits longer after each check in a row that put something back (something fighting weft)', async () => {
    let result: CheckResult = repaired;
    const { runs, notify } = setup({ result: () => result });
    const at: number[] = [];
    for (let i = 0; i < 4; i++) {
      notify();
      const before = runs().length;
      for (let t = 0; t < 200 && runs().length === before; t++) await vi.advanceTimersByTimeAsync(100);
      at.push(runs().at(-1)!);
    }
    // 200 ms after the first; then 2, 4 and 8 s after the one before.
    expect(at).toEqual([200, 2_200, 6_200, 14_200]);
    result = ok;
    notify();
    await vi.advanceTimersByTimeAsync(16_000);
    notify();
    await vi.advanceTimersByTimeAsync(2_000);
    // The repair at 14.2 s kept the 16 s gap for the next (30.2 s); that one found all well: 2 s again.
    expect(runs().slice(4)).toEqual([30_200, 32_200]);
  });

  it('polls every 5 s without notifications, after a failed check or an error elsewhere, and once a watch failed', async () => {
    const unwatched = setup({ watches: false });
    expect(unwatched.check.watching).toBe(false);
    expect(unwatched.check.notWatching).toMatch(/addon/);
    await vi.advanceTimersByTimeAsync(15_000);
    expect(unwatched.runs()).toEqual([5_000, 10_000, 15_000]);
    unwatched.check.stop();

    let result: CheckResult = failedCheck;
    const failed = setup({ result: () => result });
    failed.notify();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(failed.runs()).toEqual([200, 5_000, 10_000]);
    result = ok;
    await vi.advanceTimersByTimeAsync(30_000);
    // The check at 15 s went well: the next is the backstop's.
    expect(failed.runs()).toEqual([200, 5_000, 10_000, 15_000]);
    // An error outside a check (a write that failed): every 5 s until a check passes.
    failed.check.retrySoon();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(failed.runs()).toEqual([200, 5_000, 10_000, 15_000, 45_000]);
    failed.watch.failed = true;
    expect(failed.check.watching).toBe(false);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(failed.runs().slice(5)).toEqual([55_000, 60_000, 65_000, 70_000, 75_000, 80_000]);
    expect(failed.watch.closed).toBe(true);
    expect(failed.lost).toEqual(['the kernel change watch failed: poll: EBADF']);
    expect(failed.check.notWatching).toBe(failed.lost[0]);
  });

  it('says why it cannot watch, and polls', async () => {
    const check = new KernelCheck(
      async () => ok,
      timings,
      () => {
        throw new Error('netlink group 7: Operation not permitted');
      },
    );
    made.push(check);
    check.start();
    expect(check.notWatching).toBe('netlink: netlink group 7: Operation not permitted');
    await vi.advanceTimersByTimeAsync(10_000);
    expect(check.stats.checks).toBe(2);
  });
});
