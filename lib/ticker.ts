// Shared wake-ups for the router's periodic work. Each setInterval of its own wakes the process at its
// own phase, and on a small VM a wake-up of an idle Node process costs it 50-150 µs of CPU
// (bench/README.md, bench/startup): the one-second timers of an idle router (the allocators, VXLAN
// heartbeats, sleeve probes, the overlay choice, service probes) cost more in wake-ups than in work.
// Jobs with the same period here run on one timer, one after the other.

/** A periodic job; stop() removes it. */
export interface Tick {
  stop(): void;
}

const periods = new Map<number, { timer: NodeJS.Timeout; jobs: Set<() => void> }>();

function runAll(jobs: Set<() => void>): void {
  for (const job of [...jobs]) {
    // Stopped by a job before it in this round: not run, as with a timer of its own.
    if (!jobs.has(job)) continue;
    try {
      job();
    } catch (err) {
      // As from a timer of its own: uncaught, and the other jobs still run.
      setImmediate(() => {
        throw err;
      });
    }
  }
}

/**
 * Runs `fn` every `ms`, on the same wake-up as every other job of that period; the first time a whole
 * period after this call or later (as with a timer of its own, never sooner). Does not keep the process alive.
 */
export function every(ms: number, fn: () => void): Tick {
  const from = performance.now() + ms;
  let started = false;
  const job = () => {
    // The shared timer's phase is not ours: until a whole period has passed, skip.
    if (!started && performance.now() < from - 1) return;
    started = true;
    fn();
  };
  let period = periods.get(ms);
  if (!period) {
    const jobs = new Set<() => void>();
    period = { timer: setInterval(() => runAll(jobs), ms).unref(), jobs };
    periods.set(ms, period);
  }
  period.jobs.add(job);
  const mine = period;
  return {
    stop: () => {
      mine.jobs.delete(job);
      if (mine.jobs.size === 0 && periods.get(ms) === mine) {
        clearInterval(mine.timer);
        periods.delete(ms);
      }
    },
  };
}
