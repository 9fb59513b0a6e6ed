// When the datapath checks what it keeps in the kernel (the bridge and its ports, the VXLAN and
// sleeve devices, weft's nftables tables): soon after the kernel says a link or the nftables ruleset
// changed (its netlink notifications, through the addon), and every 30 s regardless, for what
// changes without a notification (the bridge's IPv6 settings in /proc, for one). Polling every 5 s cost an
// idle router more than anything else it did every few seconds, and left up to 5 s for a change
// underneath to last. Without the notifications (no addon, or no socket) the check runs every 5 s,
// as it always did; and again 5 s after a check that failed.
import { SerialJob } from '../lib/serial-job.js';
import { every, type Tick } from '../lib/ticker.js';
import { watchNetlink, type NetlinkWatch } from '../native/index.js';
import { NETLINK_NETFILTER, NETLINK_ROUTE } from '../net/netlink.js';

/** rtnetlink's groups: links (made, changed, removed; a bridge port's flags too), IPv6 addresses (a link-local one on the bridge). */
const RTNLGRP_LINK = 1;
const RTNLGRP_IPV6_IFADDR = 9;
/** nfnetlink's group for nftables (every transaction: tables, chains, rules, sets). */
const NFNLGRP_NFTABLES = 7;

export interface KernelCheckTimings {
  /** The timer's period; the check's period without notifications. */
  pollMs: number;
  /** With notifications: the longest time between two checks. */
  backstopMs: number;
  /** From a notification to the check (a burst of changes is one check). */
  settleMs: number;
  /** From the end of a check to the start of the next run for a notification (the check's own repairs notify too). */
  gapMs: number;
}

const KERNEL_CHECK_TIMINGS: KernelCheckTimings = {
  pollMs: 5_000,
  backstopMs: 30_000,
  settleMs: 200,
  gapMs: 2_000,
};

/** Opens the watches; tests give their own. */
export type WatchOpener = (onChange: () => void) => NetlinkWatch[] | null;

/**
 * The tables the check compares: weft's own (`inet weft`, `bridge weft`) and the host's FORWARD
 * chains (`ip filter`, `ip6 filter`), whoever else writes there.
 */
const CHECKED_TABLES = ['weft', 'filter'];

const kernelWatches: WatchOpener = (onChange) => {
  const links = watchNetlink(NETLINK_ROUTE, [RTNLGRP_LINK, RTNLGRP_IPV6_IFADDR], onChange);
  if (!links) return null;
  try {
    const nft = watchNetlink(NETLINK_NETFILTER, [NFNLGRP_NFTABLES], onChange, { nftTables: CHECKED_TABLES });
    if (!nft) throw new Error('the native addon has no nftables watch');
    return [links, nft];
  } catch (err) {
    links.close();
    throw err;
  }
};

/** What a check did: put something back, and whether it failed somewhere (then it runs again in pollMs). */
export interface CheckResult {
  repaired: boolean;
  failed: boolean;
}

/** How the check runs, for status: on the kernel's notifications or every pollMs (and why), and how often it ran. */
export interface KernelCheckStatus {
  watching: boolean;
  notWatching: string | null;
  checks: number;
  notified: number;
}

export class KernelCheck {
  private readonly job: SerialJob;
  private watches: NetlinkWatch[] = [];
  private timer: Tick | null = null;
  private lastStart = -Infinity;
  private failed = false;
  /** Checks in a row that each put something back (something fighting weft): from the second, the gap doubles. */
  private repairsInARow = 0;
  /** Why the kernel's changes are not watched (the check then runs every pollMs), or null. */
  notWatching: string | null = null;
  /** Checks run, and notifications heard (status). */
  readonly stats = { checks: 0, notified: 0 };

  /**
   * `check` should not throw: it reports its own errors. `watchLost` hears once that the watch failed
   * (the check runs every pollMs from then on).
   */
  constructor(
    private readonly check: () => Promise<CheckResult>,
    private readonly timings: KernelCheckTimings = KERNEL_CHECK_TIMINGS,
    private readonly openWatches: WatchOpener = kernelWatches,
    private readonly watchLost: (why: string) => void = () => undefined,
  ) {
    this.job = new SerialJob(
      () => this.pass(),
      timings.settleMs,
      () => Math.min(timings.backstopMs, timings.gapMs * 2 ** Math.min(Math.max(0, this.repairsInARow - 1), 10)),
    );
  }

  start(): void {
    try {
      const watches = this.openWatches(() => {
        this.stats.notified++;
        this.job.schedule();
      });
      if (watches) {
        for (const w of watches) w.unref();
        this.watches = watches;
      } else this.notWatching = 'the native addon is missing or has no netlink watch';
    } catch (err) {
      this.notWatching = `netlink: ${(err as Error).message}`;
    }
    this.timer = every(this.timings.pollMs, () => {
      if (this.due()) this.job.run().catch(() => undefined); // the check reports its own errors
    });
  }

  /** Something outside a check failed to write what the check compares: check every pollMs until one passes. */
  retrySoon(): void {
    this.failed = true;
  }

  private due(): boolean {
    const lost = this.watches.find((w) => w.stats().failed);
    if (lost) {
      // Heard nothing more: checked every pollMs from now on, as without a watch.
      this.notWatching = `the kernel change watch failed: ${lost.stats().lastError ?? 'unknown'}`;
      for (const w of this.watches) w.close();
      this.watches = [];
      this.watchLost(this.notWatching);
      return true;
    }
    if (this.watches.length === 0 || this.failed) return true;
    // Half a tick early: the timer's wake-ups drift by a few ms either way.
    return performance.now() - this.lastStart >= this.timings.backstopMs - this.timings.pollMs / 2;
  }

  private async pass(): Promise<void> {
    this.lastStart = performance.now();
    this.stats.checks++;
    const result = await this.check();
    this.failed = result.failed;
    // A repair counts whether or not the check also failed somewhere (a fight half won is a fight).
    this.repairsInARow = result.repaired ? this.repairsInARow + 1 : 0;
  }

  /** Whether the kernel's changes are being heard (false: checking every pollMs). */
  get watching(): boolean {
    return this.watches.length > 0 && this.watches.every((w) => !w.stats().failed);
  }

  status(): KernelCheckStatus {
    return { watching: this.watching, notWatching: this.notWatching, ...this.stats };
  }

  stop(): void {
    this.timer?.stop();
    this.job.stop();
    for (const w of this.watches) w.close();
    this.watches = [];
  }
}
