// A job that brings something in line with the state (the kernel's fdb, the
// policy's nftables): asked for many times, run soon, one run at a time, and once
// more when asked again while it runs, so the last state always gets applied.
export class SerialJob {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  /** What the last pass threw, if it threw (a pass should report its own errors; this is the net below it). */
  lastError: string | null = null;

  /** `pass` should not throw: it reports its own errors. */
  constructor(
    private readonly pass: () => Promise<void>,
    private readonly delayMs: number,
  ) {}

  /** Runs after delayMs (requests meanwhile are folded into that run). */
  schedule(): void {
    if (this.timer || this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.run().catch((err: Error) => (this.lastError = err.message));
    }, this.delayMs);
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
        await this.pass();
      } while (this.again);
    })();
    try {
      await this.running;
    } finally {
      this.running = null;
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
