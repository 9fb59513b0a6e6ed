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
});
