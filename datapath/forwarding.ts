// How this host reaches other hosts' containers: an overlay for each remote peer
// (overlay.ts decides, every second and on every change), the backends that carry
// them (datapath/backend.ts: the kernel VXLAN device or OVS for fastdp, the sleeve
// for the rest), each backend's programme, and the bridge's own entries (which
// port each remote MAC goes to; neighbour entries that answer ARP). Also what
// status says of each peer's path, and whose datagrams the firewall should take.
import { SerialJob } from '../lib/serial-job.js';
import type { MeshView, PeerName } from '../mesh/index.js';
import { isIpv4 } from '../net/addr.js';
import { ipBatchIn } from '../net/command.js';
import { hostOf } from '../net/host-port.js';
import { underlayAddressProblem } from '../net/validate.js';
import { nativeError } from '../native/index.js';
import { containerNamespace } from './attach.js';
import type { Backend, Programme } from './backend.js';
import { VXLAN_OVERHEAD, VXLAN_OVERHEAD6, bridgeMac } from './bridge.js';
import { programNeighbours, programPortEntries, type NeighEntry } from './bridge-tables.js';
import type { EndpointTable } from './endpoints.js';
import type { UnderlayPeers } from './firewall.js';
import { OvsBackend } from './ovs/backend.js';
import type { OvsConfig } from './ovs/switch.js';
import { chooseOverlays, overlaysChanged, type Overlay } from './overlay.js';
import { Sleeve } from './sleeve/sleeve.js';
import { VxlanBackend } from './vxlan/backend.js';
import type { FdbEntry } from './vxlan/fdb.js';
import { every, type Tick } from '../lib/ticker.js';

/** The overlay as status shows it: VXLAN through OVS is `ovs`. */
export type OverlayStatus = Overlay | 'ovs';

/** After a restart, peers the kernel was sending to over VXLAN are presumed on fastdp this long. */
const PRESUMED_MS = 4_000;

/** How the operator set forwarding up (router options). */
export interface ForwardingOptions {
  vxlanPort: number;
  /** The sleeve's UDP port (the mesh port). */
  sleevePort: number;
  /** Use the kernel VXLAN path where it works (false: --no-fastdp, sleeve only). */
  fastdp: boolean;
  /** Run the sleeve (false: --no-sleeve). */
  sleeve: boolean;
  /** Whether traffic with this peer must be encrypted (a password, and the peer not on a trusted subnet). */
  encrypt: (peer: PeerName, host: string) => boolean;
  /** fastdp through an OVS bridge weft controls, instead of the kernel's VXLAN device. */
  ovs?: OvsConfig;
  /** The overlay carries IPv6 (--ipv6): remote IPv6 addresses get neighbour entries too. */
  ipv6?: boolean;
  /**
   * An IPv6 underlay (--host an IPv6 address, `::` for both families): peers connected over IPv6 are
   * reached by VXLAN over IPv6. Without it, they have no data path here.
   */
  underlay6?: boolean;
}

interface ForwardingConfig extends ForwardingOptions {
  mtu: () => number;
  /** Told after each pass that programmed the backends (the firewall's peer sets follow). */
  programmed: () => Promise<void>;
  /** Where errors go (status shows the last). */
  error: (message: string) => void;
}

export class Forwarding {
  /** fastdp: the kernel VXLAN device, or OVS. */
  readonly tunnel: VxlanBackend | OvsBackend;
  /** The sleeve, when it runs; else why not. */
  sleeve: Sleeve | null = null;
  sleeveError: string | null = null;
  /** The overlay chosen for each remote peer at the last decision. */
  overlays = new Map<PeerName, Overlay>();
  readonly stats = { fdbAdded: 0, fdbRemoved: 0 };
  /** Each peer's underlay address, remembered after its connection goes. */
  private readonly lastAddr = new Map<PeerName, string>();
  /**
   * Neighbours connected over IPv6. With an IPv6 underlay (the kernel's second VXLAN device) they have
   * an underlay address here, for fastdp; without one (an IPv4 --host, or OVS) they have none, so
   * nothing programs a VXLAN entry to them. The sleeve reaches them where its socket is dual-stack.
   */
  private readonly overIpv6 = new Set<PeerName>();
  /** Neighbours whose underlay address no data path can use (link-local, say), with why. */
  private readonly unusable = new Map<PeerName, string>();
  private disconnectedAt = new Map<PeerName, number>();
  private reconnectedAt = new Map<PeerName, number>();
  /** Each peer's underlay address at the last choice. */
  private addrAtLastChoice = new Map<PeerName, string>();
  /** Underlay addresses the tunnel was sending to when we started: presumed on fastdp until heartbeats can tell. */
  private presumedFast = new Set<string>();
  private presumedUntil = 0;
  /** The MAC each remote container address had when last programmed (kept after it goes: see forgetMovedAddresses). */
  private readonly lastMacOf = new Map<string, string>();
  private readonly job = new SerialJob(() => this.pass(), 20);
  private timer: Tick | null = null;

  constructor(
    private readonly mesh: MeshView,
    private readonly endpoints: EndpointTable,
    private readonly config: ForwardingConfig,
  ) {
    const addrOf = (p: PeerName) => this.lastAddr.get(p);
    this.tunnel = config.ovs
      ? new OvsBackend(mesh, {
          ...config.ovs,
          mtu: config.mtu,
          addrOf,
          onReconnect: () => this.schedule(),
          ipv6: !!config.underlay6,
        })
      : new VxlanBackend(mesh, { vxlanPort: config.vxlanPort, mtu: config.mtu, addrOf, ipv6: !!config.underlay6 });
    const schedule = () => this.schedule();
    this.tunnel.heartbeats.onHealthy(() => {
      if (this.decide()) schedule();
    });
    endpoints.onChange(schedule);
    mesh
      .on('connection-added', schedule)
      .on('connection-removed', schedule)
      .on('connection-established', schedule)
      .on('topology', schedule);
  }

  async start(): Promise<void> {
    await this.tunnel.start();
    // A restarted router finds the kernel (or OVS) still delivering over VXLAN: keep that until heartbeats can judge.
    // Only what this run's settings would put on VXLAN too: not after a restart with --no-fastdp, a
    // password that now covers the address, or an address family this run's VXLAN does not carry.
    this.presumedFast = new Set(
      (await this.tunnel.presumed()).filter((addr) => !underlayAddressProblem(addr) && this.vxlanTakes('', addr)),
    );
    // A monotonic clock: a wall clock set back must not stretch the window.
    this.presumedUntil = performance.now() + PRESUMED_MS;
    // The firewall's peer sets drop the presumed peers when the window ends; and programming waits
    // at most that long for their endpoint records (see pass).
    if (this.presumedFast.size > 0) setTimeout(() => this.schedule(), PRESUMED_MS + 50).unref();
    await this.startSleeve();
    // Heartbeats change which overlay a peer should use; decide again every second, program on change.
    this.timer = every(1000, () => {
      if (this.decide()) this.schedule();
    });
  }

  private async startSleeve(): Promise<void> {
    if (!this.config.sleeve) {
      this.sleeveError = 'turned off (--no-sleeve)';
      return;
    }
    const why = nativeError();
    if (why) {
      this.sleeveError = why;
      this.mesh.log.warn({ reason: why }, 'running without the sleeve datapath');
      return;
    }
    const sleeve = new Sleeve(this.mesh, {
      port: this.config.sleevePort,
      mtu: this.config.mtu,
      underlayMtu: this.config.mtu() + (this.tunnel.underlay6 ? VXLAN_OVERHEAD6 : VXLAN_OVERHEAD),
      encrypt: this.config.encrypt,
      macOwners: () => this.endpoints.owners(),
      onMacsChange: (fn) => this.endpoints.onChange(fn),
    });
    try {
      await sleeve.start();
      this.sleeve = sleeve;
    } catch (err) {
      sleeve.stop();
      this.sleeveError = `cannot start: ${(err as Error).message}`;
      this.mesh.log.warn({ reason: this.sleeveError }, 'running without the sleeve datapath');
    }
  }

  /** Whether the sleeve runs and reaches peers over IPv6 too. */
  private get sleeve6(): boolean {
    return this.sleeve?.ipv6 === true;
  }

  private get backends(): Backend[] {
    return this.sleeve ? [this.tunnel, this.sleeve] : [this.tunnel];
  }

  /** Makes every backend's bridge port right again (after the bridge was changed underneath); what was fixed. */
  async plumb(): Promise<string[]> {
    const fixed: string[] = [];
    for (const b of this.backends)
      // A backend that cannot be put right is an error (the check then runs again 5 s later), not a repair.
      fixed.push(
        ...(await b.plumb().catch((err: Error) => {
          this.config.error(`${b.kind} port: ${err.message}`);
          // It may have made its device again before it failed: programmed again (a pass that finds
          // everything in place changes nothing).
          this.schedule();
          return [];
        })),
      );
    return fixed;
  }

  schedule(): void {
    this.job.schedule();
  }

  /** Programs now (once more after a pass in progress); resolves when the state asked for is applied. */
  program(): Promise<void> {
    return this.job.run();
  }

  stop(): void {
    this.timer?.stop();
    this.job.stop();
    for (const b of this.backends) b.stop();
  }

  // ---- the overlay of each peer

  /** Whether this run's settings carry a peer at this underlay address over VXLAN (fastdp on, its family, no encryption). */
  private vxlanTakes(peer: PeerName, host: string): boolean {
    return (isIpv4(host) || this.tunnel.underlay6) && this.config.fastdp && !this.config.encrypt(peer, host);
  }

  /** Whether the window after a restart, while what the kernel had is presumed, is still open. */
  private get presuming(): boolean {
    return performance.now() < this.presumedUntil;
  }

  /** Shortly after a restart, a peer the kernel was already sending to over VXLAN. */
  private presumedFastdp(peer: PeerName): boolean {
    const addr = this.lastAddr.get(peer);
    return this.presuming && addr !== undefined && this.presumedFast.has(addr);
  }

  /**
   * Just after a restart the endpoint table is empty until gossip brings the peers' records back:
   * programming from it would take every remote container out of the kernel for that moment. So,
   * within the presumed window, until each underlay address the kernel was sending to belongs to a
   * connected peer whose endpoint record has arrived, nothing is programmed.
   */
  private awaitingRecords(): boolean {
    if (!this.presuming || this.presumedFast.size === 0) return false;
    const arrived = new Set([...this.lastAddr].filter(([p]) => this.endpoints.records.has(p)).map(([, addr]) => addr));
    return [...this.presumedFast].some((addr) => !arrived.has(addr));
  }

  /** Whether traffic with a peer is encrypted (so never on fastdp here, which has no kernel IPsec). */
  encrypted(peer: PeerName): boolean {
    const host = this.lastAddr.get(peer);
    return host !== undefined && this.config.encrypt(peer, host);
  }

  /** Chooses each remote peer's overlay (overlay.ts); true when anything changed. */
  decide(): boolean {
    this.overIpv6.clear();
    this.unusable.clear();
    for (const n of this.mesh.neighbours()) {
      const host = hostOf(n.addr);
      const problem = underlayAddressProblem(host);
      if (problem) {
        this.unusable.set(n.name, problem);
        this.lastAddr.delete(n.name);
        continue;
      }
      if (!isIpv4(host)) this.overIpv6.add(n.name);
      if (isIpv4(host) || this.tunnel.underlay6) this.lastAddr.set(n.name, host);
      else this.lastAddr.delete(n.name);
    }
    const { overlays, disconnectedAt, reconnectedAt } = chooseOverlays({
      self: this.mesh.name,
      now: Date.now(),
      connected: new Set(this.mesh.neighbours().map((n) => n.name)),
      routed: new Set(this.mesh.dataRoutes().keys()),
      withEndpoints: new Set(this.endpoints.all().map((e) => e.peer)),
      hasAddress: (p) => this.lastAddr.has(p),
      fastdp: this.config.fastdp,
      sleeve: this.sleeve !== null,
      encrypted: (p) => this.encrypted(p),
      healthy: (p) => this.tunnel.health(p).healthy,
      presumedFast: (p) => this.presumedFastdp(p),
      previous: this.overlays,
      disconnectedAt: this.disconnectedAt,
      reconnectedAt: this.reconnectedAt,
      sameAddress: (p) => this.lastAddr.get(p) === this.addrAtLastChoice.get(p),
    });
    const changed = overlaysChanged(this.overlays, overlays);
    for (const [p, o] of overlays) {
      const was = this.overlays.get(p);
      if (was !== undefined && was !== o)
        this.mesh.log.info(
          { peer: p, was, now: o, why: o === 'fastdp' ? undefined : this.whyNotFastdp(p, overlays) },
          'overlay to peer changed',
        );
    }
    this.overlays = overlays;
    this.disconnectedAt = disconnectedAt;
    this.reconnectedAt = reconnectedAt;
    this.addrAtLastChoice = new Map(this.lastAddr);
    return changed;
  }

  /**
   * The overlay as status should show it: a peer programmed on fastdp only for want of anything
   * better (no sleeve, heartbeats unanswered) has no working data path, as far as we know.
   */
  overlayStatus(peer: PeerName): OverlayStatus {
    const o = this.overlays.get(peer) ?? 'none';
    if (
      o === 'fastdp' &&
      !this.tunnel.health(peer).healthy &&
      !this.presumedFastdp(peer) &&
      !this.reconnectedAt.has(peer)
    )
      return 'none';
    if (this.unusable.has(peer)) return 'none';
    // A neighbour over IPv6 is no sleeve hop where the kernel has no IPv6 (the sleeve's socket is IPv4).
    if (this.overIpv6.has(peer) && o === 'sleeve' && !this.sleeve6) return 'none';
    return o === 'fastdp' && this.tunnel.kind === 'ovs' ? 'ovs' : o;
  }

  /** Why a directly connected peer is not on fastdp, for status; null when it is. */
  whyNotFastdp(peer: PeerName, overlays: ReadonlyMap<PeerName, Overlay> = this.overlays): string | null {
    const h = this.tunnel.health(peer);
    if (overlays.get(peer) === 'fastdp' && h.healthy) return null;
    const unusable = this.unusable.get(peer);
    if (unusable) return `no data path to its underlay address: ${unusable}`;
    const six = this.overIpv6.has(peer);
    const sleeve6 =
      !six || this.sleeve6
        ? ''
        : this.sleeve
          ? ", and the sleeve's socket is IPv4 only here (no IPv6 in this kernel)"
          : `, and the sleeve is not running (${this.sleeveError ?? 'not started'})`;
    if (six && !this.tunnel.underlay6)
      return `connected over IPv6, and this router's --host is IPv4: give --host :: (or an IPv6 address of this host) for VXLAN over IPv6${sleeve6}`;
    if (!this.config.fastdp) return `fastdp turned off (--no-fastdp)${sleeve6}`;
    if (this.encrypted(peer))
      return sleeve6
        ? `encrypted: no kernel encryption here${sleeve6}`
        : 'encrypted: no kernel encryption here, so the sleeve carries it';
    return h.reason;
  }

  /**
   * Whose datagrams the underlay ports take. Sleeve: peers we have an established connection with.
   * VXLAN: those of them that need no encryption, and the peers this host still sends to over VXLAN
   * (their router is restarting: the kernels keep carrying traffic both ways meanwhile).
   */
  underlayPeers(): UnderlayPeers {
    const sleeve = new Set<string>();
    const vxlan = new Set<string>();
    for (const n of this.mesh.neighbours()) {
      const host = hostOf(n.addr);
      if (underlayAddressProblem(host)) continue; // its text would break the whole ruleset
      const v4 = isIpv4(host);
      if (v4 || this.sleeve6) sleeve.add(host);
      if (this.vxlanTakes(n.name, host)) vxlan.add(host);
    }
    for (const [p, o] of this.overlays) {
      const addr = this.lastAddr.get(p);
      if (o === 'fastdp' && addr && !this.config.encrypt(p, addr)) vxlan.add(addr);
    }
    // Just after a restart, before the mesh has connected again: the peers the kernel was sending to
    // over VXLAN (their VXLAN is taken as before the restart, instead of dropped until they reconnect).
    if (this.presuming) for (const addr of this.presumedFast) vxlan.add(addr);
    return {
      vxlanPort: this.config.vxlanPort,
      sleevePort: this.config.sleevePort,
      vxlan: [...vxlan].sort(),
      sleeve: [...sleeve].sort(),
    };
  }

  // ---- programming

  /**
   * What a backend carries: the peers the overlay choice gave it, and their containers. fastdp peers
   * always have an underlay address (the choice needs one); sleeve peers may be reached only through
   * relays (no address of theirs is needed: the sleeve routes by peer name).
   */
  private programme(overlay: Overlay, tunnelSources: string[]): Programme {
    const peers: { name: PeerName; addr: string }[] = [];
    for (const [name, o] of this.overlays) {
      const addr = this.lastAddr.get(name);
      if (o === overlay && (addr || overlay === 'sleeve')) peers.push({ name, addr: addr ?? '' });
    }
    const addrOf = new Map(peers.map((p) => [p.name, p.addr]));
    const remote = this.endpoints
      .all()
      .filter((e) => e.peer !== this.mesh.name && addrOf.has(e.peer))
      .map((e) => ({ id: e.container, mac: e.mac, peer: e.peer, addr: addrOf.get(e.peer)! }));
    return {
      peers,
      remote,
      local: [
        { id: 'bridge', mac: bridgeMac(this.mesh.name) },
        ...this.endpoints.local.map((e) => ({ id: e.container, mac: e.mac })),
      ],
      heartbeats: this.mesh.neighbours().map((n) => n.name),
      tunnelSources,
    };
  }

  /** One pass: decide, program every backend and the bridge's entries, then the neighbour entries. */
  private async pass(): Promise<void> {
    try {
      this.decide();
      // The kernel keeps what it had; endpoint records or the window's end schedule again. The
      // firewall's peer sets follow the connections meanwhile (finally, below).
      if (this.awaitingRecords()) return;
      const tunnelSources = this.underlayPeers().vxlan;
      const fast = this.programme('fastdp', tunnelSources);
      // Each remote MAC on the port of its peer's underlay family (the kernel has a VXLAN device per family).
      const byPort = new Map<string, string[]>(this.tunnel.ports.map((port) => [port, []]));
      for (const r of fast.remote) byPort.get(this.tunnel.portFor(r.addr))?.push(r.mac);
      // One backend failing (the kernel refusing an entry) does not hold up the others, nor the bridge's entries.
      try {
        const r = await this.tunnel.program(fast);
        this.stats.fdbAdded += r.added;
        this.stats.fdbRemoved += r.removed;
      } catch (err) {
        this.config.error(`programming ${this.tunnel.kind} failed: ${(err as Error).message}`);
      }
      if (this.sleeve) {
        const slow = this.programme('sleeve', tunnelSources);
        byPort.set(
          this.sleeve.port,
          slow.remote.map((x) => x.mac),
        );
        await this.sleeve.program(slow);
      }
      await programPortEntries(byPort);
      const neighbours = this.desiredNeighbours();
      await programNeighbours(neighbours);
      await this.forgetMovedAddresses(neighbours);
    } catch (err) {
      this.config.error(`programming the fdb failed: ${(err as Error).message}`);
    } finally {
      // The firewall's peer sets follow every pass, one that failed half way too.
      await this.config
        .programmed()
        .catch((err: Error) => this.config.error(`the firewall's peer sets: ${err.message}`));
    }
  }

  /** A neighbour entry on the bridge for every remote container address some overlay reaches. */
  private desiredNeighbours(): NeighEntry[] {
    const out: NeighEntry[] = [];
    for (const e of this.endpoints.all()) {
      const o = this.overlays.get(e.peer);
      if (e.peer === this.mesh.name || !o || o === 'none') continue;
      for (const c of e.cidrs) out.push({ ip: c.split('/')[0], mac: e.mac });
      // Without --ipv6 here the bridge has no IPv6, so no neighbour table for it either.
      if (this.config.ipv6) for (const c of e.cidrs6 ?? []) out.push({ ip: c.split('/')[0], mac: e.mac });
    }
    return out;
  }

  /**
   * A remote address that now has another MAC (an address freed and given to a new container): local
   * containers that cached the old MAC would keep sending into the void until their ARP entry ages
   * (tens of seconds), since ARP does not cross hosts (neigh_suppress). Their entry for it goes, so
   * the next packet asks again and the bridge answers with the new MAC.
   */
  private async forgetMovedAddresses(neighbours: NeighEntry[]): Promise<void> {
    const moved: string[] = [];
    for (const n of neighbours) {
      const was = this.lastMacOf.get(n.ip);
      if (was !== undefined && was !== n.mac) moved.push(n.ip);
      this.lastMacOf.set(n.ip, n.mac);
    }
    if (moved.length === 0) return;
    for (const e of this.endpoints.local) {
      const c = containerNamespace(e);
      if (c)
        await ipBatchIn(
          c.netns,
          moved.map((a) => `neigh flush to ${a} dev ${c.ifname}`),
        ).catch(() => undefined);
    }
  }

  /** The kernel VXLAN device's table (none with OVS). */
  async fdb(): Promise<FdbEntry[]> {
    return this.tunnel.kind === 'ovs' ? [] : this.tunnel.fdb();
  }
}
