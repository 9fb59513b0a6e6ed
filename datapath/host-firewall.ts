// Keeps weft's two nftables tables as the state says: `inet weft` (forwarding,
// NAT, the input side, the underlay's peer sets and the security groups' part:
// firewall.ts) and `bridge weft` (each container port bound to its MAC and
// addresses: port-guard.ts). Written whole at start and when found changed
// underneath; between, the peer sets and the port bindings change by small
// updates.
import type { Logger } from '../lib/logger.js';
import { SerialJob } from '../lib/serial-job.js';
import { nftScript } from '../net/nft-session.js';
import {
  applyFirewall,
  firewallDiffers,
  peerSetUpdates,
  removeFirewall,
  ruleset,
  type FirewallState,
  type UnderlayPeers,
} from './firewall.js';
import { rulesetGeneration } from './nft-netlink.js';
import { PortGuard, guardRuleset, type GuardOptions, type PortBinding } from './port-guard.js';

/** A part of the `inet weft` table that another component keeps: its lines and forward-chain hooks. */
export interface FirewallPart {
  part(): { lines: string[]; hooks: string[]; revokedTable: string[] } | null;
  /** Local containers the part limits on ingress (their ports get no broadcast or multicast). */
  limitedIn?(): Set<string>;
  /** The table was written with what part() last gave. */
  written(): void;
}

export interface HostFirewallConfig {
  /** What the table must say now, but for the other component's part. */
  state: () => Omit<FirewallState, 'policy'>;
  /** Each local container's port, with its MAC and addresses. */
  bindings: () => PortBinding[];
  /** What another component adds (security groups: policy/engine.ts). */
  part?: FirewallPart;
  log: Logger;
  /** Where errors go (status shows the last). */
  error: (message: string) => void;
  /** Told when the tables were found changed underneath and written again. */
  repaired: () => void;
  /** How the bridge guard is written: whether the overlay carries IPv6 (--ipv6), the bridge's MAC. */
  guard?: GuardOptions;
}

export class HostFirewall {
  /** Binds each container port to its container's MAC and addresses (the bridge's own table). */
  readonly guard: PortGuard;
  private readonly guardJob = new SerialJob(() => this.guardPass(), 10);
  /** The underlay addresses whose datagrams the firewall takes, as last written. */
  private underlayWritten: UnderlayPeers | null = null;
  /**
   * The ruleset's generation when the tables last matched what was wanted then: while neither has
   * changed, the check needs no listing (no table, chain or rule is added, edited or removed by nft or
   * iptables-nft without moving the generation; packets updating a set's elements do not move it,
   * and weft's tables have no such sets).
   */
  private matched: { generation: number; wanted: string } | null = null;

  constructor(private readonly config: HostFirewallConfig) {
    this.guard = new PortGuard(config.guard);
  }

  private state(): FirewallState {
    return { ...this.config.state(), policy: this.config.part?.part() ?? undefined };
  }

  /** Writes both tables when asked to, or when they were flushed or changed underneath. */
  async sync(force: boolean): Promise<void> {
    try {
      const why = force ? null : await this.stillDiffers();
      if (!force && why === null) return;
      const now = this.state();
      await applyFirewall(now);
      this.underlayWritten = now.underlay;
      // Whole, through the guard's own job: a pass it had scheduled (endpoints changed) folds into this one.
      this.guard.invalidate();
      await this.guardJob.run();
      if (this.guard.lastError) throw new Error(this.guard.lastError); // the pass reports, and swallows, its own
      this.config.part?.written();
      if (!force) {
        this.config.repaired();
        this.config.log.warn({ why }, 'firewall rules were missing or changed; restored');
      }
    } catch (err) {
      this.config.error(`firewall: ${(err as Error).message}`);
    }
  }

  /**
   * Why the tables differ from the state, or null. A container attached while the tables were listed
   * shows as a difference for a moment (its port's rules are there and not yet in the bindings, or
   * the other way round): only what is still different a moment later counts, so an attach under way
   * is not undone.
   */
  private async stillDiffers(): Promise<string | null> {
    const state = this.state();
    const guard = guardRuleset(this.config.bindings(), this.config.guard);
    const wanted = `${ruleset(state)}\n${guard}`;
    // Read before the listing: a change during it moves the generation, and the next check lists again.
    const generation = this.generation();
    if (generation !== null && this.matched?.generation === generation && this.matched.wanted === wanted) return null;
    this.matched = null;
    if ((await firewallDiffers(state, guard)) === null) {
      if (generation !== null) this.matched = { generation, wanted };
      return null;
    }
    await new Promise((r) => setTimeout(r, 250));
    return firewallDiffers(this.state(), guardRuleset(this.config.bindings(), this.config.guard));
  }

  /** The ruleset's generation, or null when it cannot be read (then every check lists). */
  private generation(): number | null {
    try {
      return rulesetGeneration();
    } catch {
      return null;
    }
  }

  /** Rewrites the `inet weft` table now (the policy's rules changed). */
  async refresh(): Promise<void> {
    const state = this.state();
    await applyFirewall(state);
    this.underlayWritten = state.underlay;
    this.config.part?.written();
    this.scheduleGuard(); // which containers the policy limits may have changed
  }

  /** Brings the peer sets to who is connected now (element updates; both tables whole if they fail). */
  async syncUnderlay(): Promise<void> {
    const have = this.underlayWritten;
    if (!have) return; // the table is written whole at start, with these sets
    const want = this.config.state().underlay;
    const text = peerSetUpdates(have, want);
    if (!text) return;
    try {
      await nftScript(text);
      this.underlayWritten = want;
    } catch {
      await this.sync(true);
    }
  }

  /** The port bindings follow the local endpoints (soon, once per burst of changes). */
  scheduleGuard(): void {
    this.guardJob.schedule();
  }

  private async guardPass(): Promise<void> {
    try {
      await this.guard.sync(this.config.bindings());
    } catch (err) {
      this.config.error((err as Error).message);
    }
  }

  /** Binds a container port now, before it joins the bridge (attach, and the Docker plugin's CreateEndpoint). */
  async bindPort(
    hostIf: string,
    mac: string,
    cidrs: string[],
    cidrs6: string[] = [],
    container?: string,
  ): Promise<void> {
    await this.guard.bind({
      port: hostIf,
      mac,
      addrs: cidrs.map((c) => c.split('/')[0]),
      addrs6: cidrs6.map((c) => c.split('/')[0]),
      // A re-attach keeps what the policy says of the container (a new one is limited once it is known).
      limitedIn: container !== undefined && (this.config.part?.limitedIn?.().has(container) ?? false),
    });
  }

  stop(): void {
    this.guardJob.stop();
  }

  /** For reset: weft's tables go. */
  static async remove(): Promise<void> {
    await removeFirewall();
    await PortGuard.remove();
  }
}
