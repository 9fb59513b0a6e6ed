// A job that brings something in line with the state (the kernel's fdb, the
// policy's nftables): asked for many times, run soon, one run at a time, and once
// more when asked again while it runs, so the last state always gets applied.
export class SerialJob {
  private timer: NodeJS.Timeout | null = null;
  /** When the last pass ended (performance.now()). */
  private lastEnd = -Infinity;
  /** Asked for during a pass, with a gap to keep: scheduled once the pass ends. */
  private scheduleAfter = false;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  /** What the last pass threw, if it threw (a pass should report its own errors; this is the net below it). */
  lastError: string | null = null;

  /**
   * `pass` should not throw: it reports its own errors. With `minGapMs`, a scheduled run also waits
   * until that long after the last pass ended, and one asked for during a pass is scheduled after it
   * (a job run on every change the kernel reports, whose own passes make such changes).
   */
  constructor(
    private readonly pass: () => Promise<void>,
    private readonly delayMs: number,
    private readonly minGapMs: number | (() => number) = 0,
  ) {}

  /** Runs after delayMs (requests meanwhile are folded into that run). */
  schedule(): void {
    if (this.timer || this.stopped) return;
    const gap = typeof this.minGapMs === 'function' ? this.minGapMs() : this.minGapMs;
    if (gap > 0 && this.running) {
      this.scheduleAfter = true;
      return;
    }
    const delay = Math.max(this.delayMs, this.lastEnd + gap - performance.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.run().catch((err: Error) => (this.lastError = err.message));
    }, delay);
    this.timer.unref();
  }

  /** Runs now, or once more after the run in progress; resolves when the state asked for is applied. */
  async run(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        if (this.stopped) break;
        try {
          await this.pass();
        } finally {
          this.lastEnd = performance.now();
        }
      } while (this.again);
    })();
    try {
      await this.running;
    } finally {
      this.running = null;
      if (this.scheduleAfter) {
        this.scheduleAfter = false;
        this.schedule();
      }
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
