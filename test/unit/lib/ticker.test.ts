// Shared wake-ups: jobs of one period run on the same timer, one after the other, and a stopped job
// stops while the others go on.
import { describe, expect, it } from 'vitest';
import { every } from '../../../lib/ticker.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('shared periodic jobs', () => {
  it('runs the jobs of one period on one wake-up, and stops each on its own', async () => {
    const runs: string[] = [];
    // Set by the first job of a macrotask, cleared at its end (microtasks run between timers' callbacks):
    // a job that finds it set ran in the same wake-up as the one before it.
    let sameTask = false;
    const note = (name: string) => () => {
      runs.push(sameTask ? `+${name}` : name);
      if (!sameTask) {
        sameTask = true;
        queueMicrotask(() => (sameTask = false));
      }
    };
    const a = every(40, note('a'));
    const b = every(40, note('b'));
    await sleep(230);
    a.stop();
    const both = runs.length;
    await sleep(130);
    b.stop();
    expect(both).toBeGreaterThanOrEqual(6);
    expect(runs.slice(0, both).join(' ')).toBe(
      Array(both / 2)
        .fill('a +b')
        .join(' '),
    );
    // b alone since a stopped.
    expect(runs.length).toBeGreaterThan(both);
    expect(runs.slice(both).every((r) => r === 'b')).toBe(true);
    const total = runs.length;
    await sleep(100);
    expect(runs.length).toBe(total);
  });

  it('runs a job first a whole period after it was added, and not at all once a job before it stopped it', async () => {
    const runs: string[] = [];
    let added = 0;
    const early = every(100, () => runs.push('early'));
    await sleep(60);
    added = performance.now();
    let firstLate = 0;
    const late = every(100, () => {
      firstLate ||= performance.now() - added;
      runs.push('late');
    });
    await sleep(150);
    // The shared timer fired about 40 ms after `late` was added: skipped; the next time it ran.
    expect(firstLate).toBeGreaterThanOrEqual(99);
    // A job that stops the one after it in the same round: that one does not run again.
    const victim: string[] = [];
    let v: { stop(): void } | null = null;
    const killer = every(100, () => v?.stop());
    v = every(100, () => victim.push('ran'));
    early.stop();
    late.stop();
    await sleep(350);
    killer.stop();
    expect(victim).toEqual([]);
    expect(runs.filter((r) => r === 'late').length).toBeGreaterThanOrEqual(1);
  });
});
