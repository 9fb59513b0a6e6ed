// A job run soon, one pass at a time, once more when asked during a pass; with a gap, a scheduled
// run waits until that long after the last pass ended, and one asked for during a pass comes after it.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SerialJob } from '../../../lib/serial-job.js';

function job(passMs: number, delayMs: number, gapMs?: number | (() => number)) {
  const starts: number[] = [];
  const t0 = performance.now();
  const j = new SerialJob(
    async () => {
      starts.push(Math.round(performance.now() - t0));
      await new Promise((r) => setTimeout(r, passMs));
    },
    delayMs,
    gapMs,
  );
  return { j, starts };
}

describe('SerialJob', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('without a gap: folds requests into one run, and runs once more right after a pass asked for during it', async () => {
    const { j, starts } = job(500, 100);
    j.schedule();
    j.schedule();
    await vi.advanceTimersByTimeAsync(200);
    expect(starts).toEqual([100]);
    j.schedule(); // at 200, during the pass: its timer fires at 300, the pass ends at 600, the next starts then
    await vi.advanceTimersByTimeAsync(1_000);
    expect(starts).toEqual([100, 600]);
    // run() now, and once more after the pass in progress; resolves when that one is done.
    const done = j.run();
    const again = j.run();
    await vi.advanceTimersByTimeAsync(2_000);
    await Promise.all([done, again]);
    expect(starts).toEqual([100, 600, 1_200, 1_700]);
    j.stop();
  });

  it('with a gap: waits for it after the last pass ended, and schedules what was asked during a pass after it', async () => {
    const { j, starts } = job(500, 100, 1_000);
    j.schedule();
    await vi.advanceTimersByTimeAsync(200);
    expect(starts).toEqual([100]);
    j.schedule(); // during the pass (ends at 600): runs at 1600
    await vi.advanceTimersByTimeAsync(1_300);
    expect(starts).toEqual([100]);
    await vi.advanceTimersByTimeAsync(200);
    expect(starts).toEqual([100, 1_600]);
    // Long after the last pass: the delay only.
    await vi.advanceTimersByTimeAsync(5_000);
    j.schedule();
    await vi.advanceTimersByTimeAsync(100);
    expect(starts).toEqual([100, 1_600, 6_800]);
    j.stop();
  });

  it('takes the gap from a function at each request; stop() drops what was asked for during a pass', async () => {
    let gap = 0;
    const { j, starts } = job(500, 100, () => gap);
    j.schedule();
    await vi.advanceTimersByTimeAsync(700);
    gap = 3_000;
    j.schedule(); // at 700, 100 ms after the pass ended: at 3600
    await vi.advanceTimersByTimeAsync(2_800);
    expect(starts).toEqual([100]);
    await vi.advanceTimersByTimeAsync(100);
    expect(starts).toEqual([100, 3_600]);
    j.schedule(); // during the pass, deferred
    j.stop();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(starts).toEqual([100, 3_600]);
  });
});
