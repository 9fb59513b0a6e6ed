// The datapath service: keeps the bridge and VXLAN device right, attaches and
// detaches containers (addresses from IPAM unless given), announces local
// endpoints, and programs the fdb whenever endpoints or connections change.
import { join } from 'node:path';
import { readCheckedList, type StateDir } from '../lib/json-file.js';
import { formatIp, isIpv4, parseCidr } from '../net/addr.js';
import type { Allocator } from '../ipam/allocator.js';
import type { MeshView, PeerName } from '../mesh/index.js';
import { hostOf } from '../net/host-port.js';
import { attachContainer, containerExists, containerNamespace, detachContainer, forgetNetns, hostIfName, namespaceInode, netnsPathOf, rememberNetns } from './attach.js';
import { BRIDGE, OVS_VETH_BRIDGE_END, VNI, VXLAN_OVERHEAD, bridgeMac, ensureBridge, removeBridge, underlayMtu } from './bridge.js';
import { OvsSwitch, type OvsConfig } from './ovs/switch.js';
import { desiredFlows } from './ovs/flows.js';
import { EndpointTable, endpointCodec, type Endpoint } from './endpoints.js';
import { PortGuard, guardRuleset, type PortBinding } from './port-guard.js';
import { canonicalCidr, checkIfName } from '../net/validate.js';
import { FLOOD_MAC, programFdb, programNeighbours, readFdb, type FdbEntry, type NeighEntry } from './vxlan/fdb.js';
import { ip, ipBatch, ipBatchIn, linkExists, nft, sysctl } from '../net/command.js';
import { applyFirewall, firewallDiffers, peerSetUpdates, removeFirewall, type FirewallState, type UnderlayPeers } from './firewall.js';
import { FastdpHealth } from './vxlan/health.js';
import { SLEEVE_TAP, Sleeve } from './sleeve/sleeve.js';
import { nativeError } from '../native/index.js';
import { SerialJob } from '../lib/serial-job.js';

/** How traffic to a peer travels ('fastdp': VXLAN, by the kernel device or by OVS). */
export type Overlay = 'fastdp' | 'sleeve' | 'none';
/** The overlay as status shows it: VXLAN through OVS is `ovs`. */
export type OverlayStatus = Overlay | 'ovs';

export const EXPOSE_ID = 'weft:expose';

/** How long a peer that was on fastdp keeps it after its connection goes, before a relay is tried. */
const FASTDP_HOLD_MS = 5_000;

export interface DatapathConfig {
  /** The data directory (endpoints.json, exposed.json) and who records failed writes. */
  state: StateDir;
  /** The router's own ports: never reachable from containers (datapath/firewall.ts). */
  routerPorts: { tcp: number[]; udp: number[] };
  /** With weft's DNS: its address on the bridge, and the resolv.conf containers get. */
  dns?: { ip: string; domain: string };
  /** Overlay MTU; default: the underlay's minus the VXLAN overhead. */
  mtu?: number;
  vxlanPort: number;
  /** The sleeve's UDP port (the mesh port). */
  sleevePort: number;
  /** Use the kernel VXLAN path where it works (false: --no-fastdp, sleeve only). */
  fastdp: boolean;
  /** Run the sleeve (false: --no-sleeve). */
  sleeve: boolean;
  /** Whether traffic with this peer must be encrypted (a password, and the peer not on a trusted subnet). */
  encrypt: (peer: PeerName, host: string) => boolean;
  /** The OVS datapath (--datapath ovs): VXLAN through an OVS bridge weft controls, instead of the kernel's device. */
  ovs?: OvsConfig;
  /** What another component adds to the firewall table (security groups: policy/engine.ts), and hears when it is written. */
  firewallPart?: FirewallPart;
  /** Told when a container is detached or found gone (DNS drops its names). */
  containerGone?: (container: string) => void;
}

/** A part of the `inet weft` table that another component keeps: its lines and forward-chain hooks. */
export interface FirewallPart {
  part(): { lines: string[]; hooks: string[] } | null;
  /** The table was written with what part() last gave. */
  written(): void;
}

export class Datapath {
  readonly endpoints: EndpointTable;
  readonly health: FastdpHealth;
  mtu = 1450;
  private readonly reconciler = new SerialJob(() => this.reconcilePass(), 20);
  private stopped = false;
  private checkTimer: NodeJS.Timeout | null = null;
  readonly stats = { fdbAdded: 0, fdbRemoved: 0, repairs: 0, errors: 0 };
  lastError: string | null = null;
  /** Addresses this host has on the overlay (weft expose), "ip/prefix". */
  exposed: string[] = [];
  /** Each peer's underlay address, remembered after its connection goes (see desiredFdb). */
  private readonly lastAddr = new Map<string, string>();
  /** The sleeve, when it runs; else why not. */
  sleeve: Sleeve | null = null;
  sleeveError: string | null = null;
  /** The MAC each remote container address had when last programmed (kept after it goes: see forgetMovedAddresses). */
  private readonly lastMacOf = new Map<string, string>();
  /** The overlay chosen for each remote peer at the last decision. */
  overlays = new Map<PeerName, Overlay>();
  /** Peers with VXLAN flood entries when we started: presumed on fastdp until heartbeats can tell. */
  private presumedFast = new Set<string>();
  private presumedUntil = 0;
  private overlayTimer: NodeJS.Timeout | null = null;
  /** When each peer that was on fastdp lost its connection. */
  private readonly disconnectedAt = new Map<PeerName, number>();
  /** The OVS bridge, with --datapath ovs. */
  ovs: OvsSwitch | null = null;
  /** Binds each container port to its container's MAC and addresses (the bridge's own table). */
  readonly guard = new PortGuard();
  private readonly guardJob = new SerialJob(() => this.guardPass(), 10);
  /** The underlay addresses whose datagrams the firewall takes, as last written. */
  private underlayWritten: UnderlayPeers | null = null;

  constructor(
    private readonly mesh: MeshView,
    private readonly ipam: Allocator,
    readonly config: DatapathConfig,
  ) {
    this.endpoints = new EndpointTable(mesh);
    if (config.ovs) this.ovs = new OvsSwitch(config.ovs, mesh.log);
    const ovsCounter = this.ovs ? (peers: PeerName[]) => this.ovs!.heartbeatCounts(peers) : null;
    this.health = new FastdpHealth(mesh, config.vxlanPort, () => this.mtu, (p) => this.lastAddr.get(p), 1000, ovsCounter);
    this.endpoints.onChange(() => this.scheduleReconcile());
    this.endpoints.onChange(() => this.guardJob.schedule());
    const reconcile = () => this.scheduleReconcile();
    mesh.on('connection-added', reconcile).on('connection-removed', reconcile).on('connection-established', reconcile).on('topology', reconcile);
  }

  private get statePath(): string {
    return join(this.config.state.dir, 'endpoints.json');
  }

  async start(): Promise<void> {
    this.mtu = this.config.mtu ?? (await underlayMtu()) - VXLAN_OVERHEAD;
    await ensureBridge(this.bridgeConfig());
    await this.ensureDnsAddress();
    if (this.ovs) {
      await this.ovs.start();
      this.ovs.onReconnect = () => this.scheduleReconcile();
    }
    // A restarted router finds the kernel (or OVS) still delivering over VXLAN: keep that until heartbeats can judge.
    this.presumedFast = new Set(this.ovs ? await this.ovs.floodDestinations() : (await readFdb()).filter((e) => e.mac === FLOOD_MAC).map((e) => e.dst));
    this.presumedUntil = Date.now() + 4_000;
    await this.startSleeve();
    // Containers attached before a restart are still plumbed: announce those that still exist.
    const saved = this.loadLocal();
    const alive: Endpoint[] = [];
    for (const e of saved) {
      try {
        if (e.netns) rememberNetns(e.container, e.netns);
      } catch {
        // a path we do not accept: the container counts as gone
      }
      if (containerExists(e.container, e.nsInode)) {
        alive.push(e);
        continue;
      }
      this.mesh.log.info({ container: e.container }, 'attached container is gone; forgetting it and freeing its addresses');
      await detachContainer(e.container, e.ifname).catch(() => undefined); // its leftovers: host veth, resolv.conf
      await this.release(e);
    }
    this.setLocal(alive);
    this.exposed = this.loadExposed();
    await this.syncFirewall(true);
    this.scheduleReconcile();
    // Repair the bridge if someone changes it underneath.
    this.checkTimer = setInterval(() => void this.check(), 5_000);
    this.checkTimer.unref();
    this.health.start();
    // Heartbeats change which overlay a peer should use; re-decide every second, program on change.
    this.overlayTimer = setInterval(() => {
      if (this.decideOverlays()) this.scheduleReconcile();
    }, 1000);
    this.overlayTimer.unref();
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
      mtu: () => this.mtu,
      underlayMtu: this.mtu + VXLAN_OVERHEAD,
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

  /**
   * The overlay as status should show it: a peer programmed on fastdp only for want of anything
   * better (no sleeve, heartbeats unanswered) has no working data path, as far as we know.
   */
  overlayStatus(peer: PeerName): OverlayStatus {
    const o = this.overlays.get(peer) ?? 'none';
    if (o === 'fastdp' && !this.health.healthy(peer) && !this.presumedFastdp(peer)) return 'none';
    return o === 'fastdp' && this.ovs ? 'ovs' : o;
  }

  /** Shortly after a restart, a peer the kernel was already sending to over VXLAN. */
  private presumedFastdp(peer: PeerName): boolean {
    const addr = this.lastAddr.get(peer);
    return Date.now() < this.presumedUntil && addr !== undefined && this.presumedFast.has(addr);
  }

  /** Whether traffic with a peer is encrypted (so never on fastdp here, which has no kernel IPsec). */
  encrypted(peer: PeerName): boolean {
    const host = this.lastAddr.get(peer);
    return host !== undefined && this.config.encrypt(peer, host);
  }

  /** Why a directly connected peer is not on fastdp, for status; null when it is. */
  whyNotFastdp(peer: PeerName): string | null {
    if (this.overlays.get(peer) === 'fastdp' && this.health.healthy(peer)) return null;
    if (!this.config.fastdp) return 'fastdp turned off (--no-fastdp)';
    if (this.encrypted(peer)) return 'encrypted: no kernel encryption here, so the sleeve carries it';
    return this.health.reason(peer);
  }

  /**
   * Chooses each remote peer's overlay: fastdp for direct peers whose VXLAN heartbeats are
   * acknowledged (and that need no encryption); else the sleeve, directly or relayed; a peer
   * whose connection is gone keeps fastdp (its kernel still delivers while its router restarts).
   * Returns whether anything changed.
   */
  decideOverlays(): boolean {
    const routes = this.mesh.dataRoutes();
    const connected = new Set<PeerName>(this.mesh.neighbours().map((n) => n.name));
    const withEndpoints = new Set(this.endpoints.all().map((e) => e.peer));
    const peers = new Set<PeerName>([...connected, ...routes.keys(), ...withEndpoints]);
    peers.delete(this.mesh.name);
    const next = new Map<PeerName, Overlay>();
    for (const p of peers) {
      const prev = this.overlays.get(p);
      const addr = this.lastAddr.get(p);
      const fastOk = this.config.fastdp && addr !== undefined && !this.encrypted(p);
      let o: Overlay = 'none';
      if (connected.has(p)) this.disconnectedAt.delete(p);
      else if (prev === 'fastdp' && !this.disconnectedAt.has(p)) this.disconnectedAt.set(p, Date.now());
      const justLost = !connected.has(p) && Date.now() - (this.disconnectedAt.get(p) ?? 0) < FASTDP_HOLD_MS;
      if (connected.has(p) && fastOk && this.health.healthy(p)) o = 'fastdp';
      else if (connected.has(p) && fastOk && this.presumedFastdp(p)) o = 'fastdp';
      // A peer whose connection just went (its router restarting, say) keeps the kernel path: other peers'
      // topology may still show a route to it for a few heartbeats, and a relay through them would not work.
      else if (justLost && prev === 'fastdp' && fastOk) o = 'fastdp';
      else if (this.sleeve && (connected.has(p) || routes.has(p))) o = 'sleeve';
      else if (!connected.has(p) && prev === 'fastdp' && fastOk) o = 'fastdp';
      else if (!this.sleeve && fastOk && (connected.has(p) || withEndpoints.has(p))) o = 'fastdp'; // nothing better to try
      next.set(p, o);
    }
    const changed = next.size !== this.overlays.size || [...next].some(([p, o]) => this.overlays.get(p) !== o);
    for (const [p, o] of next) {
      const was = this.overlays.get(p);
      if (was !== undefined && was !== o) this.mesh.log.info({ peer: p, was, now: o, why: o === 'fastdp' ? undefined : this.whyNotFastdp(p) }, 'overlay to peer changed');
    }
    this.overlays = next;
    if (this.sleeve) this.sleeve.destinations = new Set([...next].filter(([, o]) => o === 'sleeve').map(([p]) => p));
    return changed;
  }

  /** The periodic check; never rejects (a timer runs it). */
  private async check(): Promise<void> {
    try {
      await this.checkOnce();
    } catch (err) {
      this.noteError(`check failed: ${(err as Error).message}`);
    }
  }

  private async checkOnce(): Promise<void> {
    if (this.stopped) return;
    // Containers that went away take their veths with them: forget their endpoints.
    const gone = this.endpoints.local.filter((e) => !containerExists(e.container, e.nsInode));
    if (gone.length > 0) {
      this.setLocal(this.endpoints.local.filter((e) => !gone.includes(e)));
      for (const e of gone) {
        await detachContainer(e.container, e.ifname).catch(() => undefined); // its leftovers: host veth, resolv.conf
        await this.release(e);
      }
    }
    await this.syncFirewall(false);
    try {
      const fixed = await ensureBridge(this.bridgeConfig());
      if (fixed.length > 0) {
        await this.ensureDnsAddress();
        await this.sleeve?.plumb().catch((err: Error) => this.noteError(`sleeve port: ${err.message}`));
        this.stats.repairs++;
        this.mesh.log.warn({ fixed }, 'bridge repaired');
        this.scheduleReconcile();
      }
    } catch (err) {
      this.noteError(`bridge check failed: ${(err as Error).message}`);
    }
  }

  private bridgeConfig() {
    return { mac: bridgeMac(this.mesh.name), mtu: this.mtu, vxlanPort: this.config.vxlanPort, ovs: !!this.ovs };
  }

  /** The DNS server's address on the bridge; host routes back to local containers so replies find them. */
  private async ensureDnsAddress(): Promise<void> {
    const dns = this.config.dns;
    if (!dns) return;
    await ip(['addr', 'replace', `${dns.ip}/32`, 'dev', BRIDGE]);
    await this.routeBack(this.endpoints.local.flatMap((e) => e.cidrs));
  }

  private firewallState(): FirewallState {
    return {
      exposed: [...new Set(this.exposed.map((c) => { const p = parseCidr(c, true); return `${formatIp(p.start)}/${p.prefix}`; }))],
      policy: this.config.firewallPart?.part() ?? undefined,
      host: { dns: this.config.dns ? { ip: this.config.dns.ip, port: 53 } : null, routerPorts: this.config.routerPorts },
      underlay: this.underlayPeers(),
    };
  }

  /**
   * Whose datagrams the underlay ports take. Sleeve: peers we have an established connection with.
   * VXLAN: those of them that need no encryption, and the peers this host still sends to over VXLAN
   * (their router is restarting: the kernels keep carrying traffic both ways meanwhile).
   */
  private underlayPeers(): UnderlayPeers {
    const sleeve = new Set<string>();
    const vxlan = new Set<string>();
    for (const n of this.mesh.neighbours()) {
      const host = hostOf(n.addr);
      if (!isIpv4(host)) continue;
      sleeve.add(host);
      if (this.config.fastdp && !this.config.encrypt(n.name, host)) vxlan.add(host);
    }
    for (const [p, o] of this.overlays) {
      const addr = this.lastAddr.get(p);
      if (o === 'fastdp' && addr && !this.config.encrypt(p, addr)) vxlan.add(addr);
    }
    return { vxlanPort: this.config.vxlanPort, sleevePort: this.config.sleevePort, vxlan: [...vxlan].sort(), sleeve: [...sleeve].sort() };
  }

  /** Brings the firewall's peer sets to who is connected now (element updates; the whole table if they fail). */
  private async syncUnderlay(): Promise<void> {
    const want = this.underlayPeers();
    const have = this.underlayWritten;
    if (!have) return; // the table is written whole at start, with these sets
    const text = peerSetUpdates(have, want);
    if (!text) return;
    try {
      await nft(['-f', '-'], text);
      this.underlayWritten = want;
    } catch {
      await this.syncFirewall(true);
    }
  }

  /** Each local container's port, bound to its MAC and addresses. */
  private bindings(): PortBinding[] {
    return this.endpoints.local.map((e) => ({ port: hostIfName(e.container), mac: e.mac, addrs: e.cidrs.map((c) => c.split('/')[0]) }));
  }

  private async guardPass(): Promise<void> {
    try {
      await this.guard.sync(this.bindings());
    } catch (err) {
      this.noteError((err as Error).message);
    }
  }

  /** Binds a container port now, before it joins the bridge (attach, and the Docker plugin's CreateEndpoint). */
  async bindPort(hostIf: string, mac: string, cidrs: string[]): Promise<void> {
    await this.guard.bind({ port: hostIf, mac, addrs: cidrs.map((c) => c.split('/')[0]) });
  }

  /** Rewrites the firewall table now (the policy's rules changed). */
  async refreshFirewall(): Promise<void> {
    const state = this.firewallState();
    await applyFirewall(state);
    this.underlayWritten = state.underlay;
    this.config.firewallPart?.written();
  }

  /** Writes the firewall tables when asked to, or when they were flushed or changed underneath. */
  private async syncFirewall(force: boolean): Promise<void> {
    try {
      const state = this.firewallState();
      const bindings = this.bindings();
      const why = force ? null : await firewallDiffers(state, guardRuleset(bindings));
      if (!force && why === null) return;
      await applyFirewall(state);
      this.underlayWritten = state.underlay;
      this.guard.invalidate();
      await this.guard.sync(bindings);
      this.config.firewallPart?.written();
      if (!force) {
        this.stats.repairs++;
        this.mesh.log.warn({ why }, 'firewall rules were missing or changed; restored');
      }
    } catch (err) {
      this.noteError(`firewall: ${(err as Error).message}`);
    }
  }

  private get exposedPath(): string {
    return join(this.config.state.dir, 'exposed.json');
  }

  private loadExposed(): string[] {
    return readCheckedList(this.exposedPath, (c) => canonicalCidr(c, true, 'exposed address'));
  }

  private saveExposed(): void {
    this.config.state.writes.write(this.exposedPath, this.exposed);
  }

  /** Gives the host an address on the overlay (from IPAM unless given) and NAT to the outside. Idempotent. */
  async expose(cidr?: string): Promise<string[]> {
    let addr: string;
    if (cidr) {
      const p = parseCidr(cidr, true);
      await this.ipam.claim(EXPOSE_ID, p.addr, { start: p.start, prefix: p.prefix });
      addr = `${formatIp(p.addr)}/${p.prefix}`;
    } else if (this.exposed.length > 0) {
      return this.exposed;
    } else {
      const got = await this.ipam.allocate(EXPOSE_ID);
      addr = `${formatIp(got.addr)}/${got.prefix}`;
    }
    if (!this.exposed.includes(addr)) {
      await ip(['addr', 'replace', addr, 'dev', BRIDGE]);
      this.exposed.push(addr);
      this.saveExposed();
    }
    // The host forwards between the overlay and its other links for the exposed subnets.
    await sysctl('net.ipv4.ip_forward', '1').catch((err: Error) => this.noteError(`cannot enable forwarding: ${err.message}`));
    await this.syncFirewall(true);
    return this.exposed;
  }

  /** Removes the host's overlay addresses (all, or one) and their NAT; frees them in IPAM. */
  async hide(cidr?: string): Promise<string[]> {
    const gone = cidr ? this.exposed.filter((a) => a === cidr || a.split('/')[0] === cidr.split('/')[0]) : [...this.exposed];
    for (const a of gone) {
      await ip(['addr', 'del', a, 'dev', BRIDGE]).catch(() => undefined);
      await this.ipam.free(EXPOSE_ID, parseCidr(a, true).addr).catch(() => undefined);
    }
    this.exposed = this.exposed.filter((a) => !gone.includes(a));
    this.saveExposed();
    await this.syncFirewall(true);
    return gone;
  }

  private noteError(msg: string): void {
    this.stats.errors++;
    this.lastError = msg;
    this.mesh.log.error({ err: msg }, 'datapath error');
  }

  /** Endpoints saved by the last run: each checked as a peer's would be, with the fields kept only here. */
  private loadLocal(): Endpoint[] {
    return readCheckedList(this.statePath, (x) => {
      const e = x as Endpoint;
      const ep = endpointCodec.fromWire(endpointCodec.toWire(e));
      if (e.netns !== undefined && typeof e.netns !== 'string') throw new Error('netns is not a path');
      if (e.ifname !== undefined) checkIfName(e.ifname);
      if (e.nsInode !== undefined && !Number.isSafeInteger(e.nsInode)) throw new Error('nsInode is not a number');
      return { ...ep, ...(e.netns !== undefined ? { netns: e.netns } : {}), ...(e.ifname !== undefined ? { ifname: e.ifname } : {}), ...(e.nsInode !== undefined ? { nsInode: e.nsInode } : {}) };
    });
  }

  private setLocal(endpoints: Endpoint[]): void {
    this.config.state.writes.write(this.statePath, endpoints);
    this.endpoints.setLocal(endpoints);
  }

  /**
   * Attaches a container; with no addresses given, one comes from IPAM. Returns its endpoint.
   * A CNI container (`cni:ID`) comes with its namespace path and interface name.
   */
  async attach(container: string, cidrs: string[], subnet?: string, cni?: { netns: string; ifname: string }, groups?: string[]): Promise<Endpoint> {
    if (cni) rememberNetns(container, cni.netns);
    netnsPathOf(container); // a clear error before anything is allocated
    let addrs = cidrs.map((c) => {
      const p = parseCidr(c, true);
      return `${formatIp(p.addr)}/${p.prefix}`;
    });
    if (addrs.length === 0) {
      const got = await this.ipam.allocate(container, subnet ? parseCidr(subnet) : undefined);
      addrs = [`${formatIp(got.addr)}/${got.prefix}`];
    } else {
      for (const c of cidrs) {
        const p = parseCidr(c, true);
        await this.ipam.claim(container, p.addr, { start: p.start, prefix: p.prefix });
      }
    }
    const dns = this.config.dns;
    const prevCidrs = this.endpoints.local.find((e) => e.container === container)?.cidrs ?? [];
    let mac: string;
    try {
      ({ mac } = await attachContainer(
        container,
        addrs,
        this.mtu,
        (hostIf, m) => this.bindPort(hostIf, m, [...prevCidrs, ...addrs]),
        dns ? { ip: dns.ip, bridgeMac: bridgeMac(this.mesh.name), resolvConf: `# written by weft attach\nnameserver ${dns.ip}\nsearch ${dns.domain.replace(/\.$/, '')}\n` } : undefined,
        cni?.ifname,
      ));
    } catch (err) {
      // A container that was not attached before keeps no address from an attach that failed (a
      // full bridge, a namespace gone meanwhile); one that was keeps what it had.
      const had = new Set(this.endpoints.local.find((e) => e.container === container)?.cidrs ?? []);
      for (const a of addrs) if (!had.has(a)) await this.ipam.free(container, parseCidr(a, true).addr).catch(() => undefined);
      throw err;
    }
    await this.routeBack(addrs);
    const prev = this.endpoints.local.find((e) => e.container === container);
    const g = groups ?? prev?.groups;
    const inode = namespaceInode(netnsPathOf(container));
    const ep: Endpoint = {
      container,
      mac,
      cidrs: [...new Set([...(prev?.cidrs ?? []), ...addrs])],
      ...(g && g.length > 0 ? { groups: [...new Set(g)].sort() } : {}),
      ...(cni ? { netns: cni.netns, ifname: cni.ifname } : {}),
      ...(inode !== null ? { nsInode: inode } : {}),
    };
    this.setLocal([...this.endpoints.local.filter((e) => e.container !== container), ep]);
    return ep;
  }

  /** With DNS on the bridge: host routes back to local container addresses, so the server's replies find them. */
  private async routeBack(cidrs: string[]): Promise<void> {
    const dns = this.config.dns;
    if (dns) await ipBatch(cidrs.map((a) => `route replace ${a.split('/')[0]}/32 dev ${BRIDGE} src ${dns.ip}`)).catch(() => undefined);
  }

  /**
   * Announces an endpoint someone else plumbed (the Docker network plugin: a veth on the bridge that
   * Docker moves into the container) so peers learn where its MAC lives.
   */
  async plug(key: string, mac: string, cidrs: string[], groups: string[] = []): Promise<Endpoint> {
    await this.routeBack(cidrs);
    const ep: Endpoint = { container: key, mac, cidrs, ...(groups.length > 0 ? { groups: [...new Set(groups)].sort() } : {}) };
    this.setLocal([...this.endpoints.local.filter((e) => e.container !== key), ep]);
    return ep;
  }

  /** Changes the security groups of a local endpoint (a Docker label read after the plugin made it). */
  setGroups(key: string, groups: string[]): void {
    const ep = this.endpoints.local.find((e) => e.container === key);
    if (!ep) return;
    const next = [...new Set(groups)].sort();
    if (JSON.stringify(next) === JSON.stringify(ep.groups ?? [])) return;
    const { groups: _old, ...rest } = ep;
    this.setLocal(this.endpoints.local.map((e) => (e === ep ? { ...rest, ...(next.length > 0 ? { groups: next } : {}) } : e)));
  }

  /** Where a plugged endpoint ended up inside its container (the Docker watcher finds it at start): services translate there. */
  setNamespace(key: string, netns: string, ifname: string): void {
    const ep = this.endpoints.local.find((e) => e.container === key);
    if (!ep || (ep.netns === netns && ep.ifname === ifname)) return;
    this.setLocal(this.endpoints.local.map((e) => (e === ep ? { ...ep, netns, ifname } : e)));
  }

  /** Withdraws a plugged endpoint (its addresses are the plugin's to free). */
  async unplug(key: string): Promise<void> {
    const ep = this.endpoints.local.find((e) => e.container === key);
    if (!ep) return;
    this.setLocal(this.endpoints.local.filter((e) => e.container !== key));
    if (this.config.dns) await ipBatch(ep.cidrs.map((c) => `route del ${c.split('/')[0]}/32 dev ${BRIDGE}`)).catch(() => undefined);
    this.config.containerGone?.(key);
  }

  /** A container that died: what is left of its attachment goes, its addresses and names too. False if it had none here. */
  async forget(container: string): Promise<boolean> {
    if (!this.endpoints.local.some((e) => e.container === container)) return false;
    await this.detach(container);
    return true;
  }

  /** Frees a container's addresses in IPAM, if it has any (not attached, or half attached). */
  async freeAddresses(container: string): Promise<void> {
    await this.ipam.free(container).catch(() => undefined);
  }

  /** Detaches a container and frees its addresses. */
  async detach(container: string): Promise<Endpoint> {
    const ep = this.endpoints.local.find((e) => e.container === container);
    if (!ep) throw new Error(`container ${container} is not attached here`);
    await detachContainer(container, ep.ifname);
    this.setLocal(this.endpoints.local.filter((e) => e.container !== container));
    await this.release(ep);
    return ep;
  }

  /**
   * What remains once a container's interface is gone (detached, or found gone): its namespace
   * path, the host routes back to it, its addresses in IPAM, its names (onGone).
   */
  private async release(e: Endpoint): Promise<void> {
    forgetNetns(e.container);
    if (this.config.dns) await ipBatch(e.cidrs.map((c) => `route del ${c.split('/')[0]}/32 dev ${BRIDGE}`)).catch(() => undefined);
    await this.ipam.free(e.container).catch(() => undefined);
    this.config.containerGone?.(e.container);
  }

  /** The fdb this host should have: remote MACs of fastdp peers at their peers, a flood entry per fastdp peer. */
  desiredFdb(): FdbEntry[] {
    for (const n of this.mesh.neighbours()) this.lastAddr.set(n.name, hostOf(n.addr));
    this.decideOverlays();
    const out: FdbEntry[] = [];
    const floods = new Set<string>();
    for (const [p, o] of this.overlays) {
      const dst = this.lastAddr.get(p);
      if (o === 'fastdp' && dst) floods.add(dst);
    }
    for (const dst of floods) out.push({ mac: FLOOD_MAC, dst });
    for (const e of this.endpoints.all()) {
      const dst = this.lastAddr.get(e.peer);
      if (e.peer !== this.mesh.name && dst && this.overlays.get(e.peer) === 'fastdp') out.push({ mac: e.mac, dst });
    }
    return out;
  }

  /** Remote MACs the bridge sends to the sleeve's port. */
  desiredSleeveMacs(): string[] {
    return this.endpoints.all().filter((e) => e.peer !== this.mesh.name && this.overlays.get(e.peer) === 'sleeve').map((e) => e.mac);
  }

  /** A neighbour entry on the bridge for every remote container address some overlay reaches. */
  desiredNeighbours(): NeighEntry[] {
    const out: NeighEntry[] = [];
    for (const e of this.endpoints.all()) {
      const o = this.overlays.get(e.peer);
      if (e.peer === this.mesh.name || !o || o === 'none') continue;
      for (const c of e.cidrs) out.push({ ip: c.split('/')[0], mac: e.mac });
    }
    return out;
  }

  scheduleReconcile(): void {
    this.reconciler.schedule();
  }

  /** Applies the desired fdb; one run at a time, and once more if something changed meanwhile. */
  reconcile(): Promise<void> {
    return this.reconciler.run();
  }

  private async reconcilePass(): Promise<void> {
    try {
      if (!(await linkExists(BRIDGE))) await this.check();
      const fdb = this.desiredFdb();
      const sleeve = this.sleeve ? { dev: SLEEVE_TAP, macs: this.desiredSleeveMacs() } : undefined;
      const r = await programFdb(fdb, sleeve, this.ovs ? { dev: OVS_VETH_BRIDGE_END, vxlan: false } : undefined);
      this.stats.fdbAdded += r.added;
      this.stats.fdbRemoved += r.removed;
      if (this.ovs) await this.programOvs(fdb);
      const neighbours = this.desiredNeighbours();
      await programNeighbours(neighbours);
      await this.forgetMovedAddresses(neighbours);
      await this.syncUnderlay();
    } catch (err) {
      this.noteError(`programming the fdb failed: ${(err as Error).message}`);
    }
  }

  /** The OVS bridge's flows from the same desired fdb: flood and remote MACs, local MACs, heartbeats. */
  private async programOvs(fdb: FdbEntry[]): Promise<void> {
    const ovs = this.ovs!;
    const remote = this.endpoints.all().filter((e) => e.peer !== this.mesh.name);
    const dstOf = new Map(fdb.filter((e) => e.mac !== FLOOD_MAC).map((e) => [e.mac, e.dst]));
    const heartbeats = this.mesh.neighbours().map((n) => ({ peer: n.name, mac: bridgeMac(n.name) }));
    const flows = desiredFlows({
      vni: VNI,
      local: [{ id: 'bridge', mac: bridgeMac(this.mesh.name) }, ...this.endpoints.local.map((e) => ({ id: e.container, mac: e.mac }))],
      remote: remote.filter((e) => dstOf.has(e.mac)).map((e) => ({ id: e.container, mac: e.mac, dst: dstOf.get(e.mac)! })),
      floods: fdb.filter((e) => e.mac === FLOOD_MAC).map((e) => e.dst),
      heartbeats,
      tunnelSources: this.underlayPeers().vxlan,
    });
    const r = await ovs.program(flows);
    this.stats.fdbAdded += r.added;
    this.stats.fdbRemoved += r.removed;
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
      if (c) await ipBatchIn(c.netns, moved.map((a) => `neigh flush to ${a} dev ${c.ifname}`)).catch(() => undefined);
    }
  }

  async fdb(): Promise<FdbEntry[]> {
    return this.ovs ? [] : readFdb();
  }

  /** Stops all programming of the kernel (what is programmed stays, so traffic keeps flowing). */
  stop(): void {
    this.stopped = true;
    this.endpoints.stop();
    this.health.stop();
    this.sleeve?.stop();
    this.ovs?.stop();
    if (this.overlayTimer) clearInterval(this.overlayTimer);
    if (this.checkTimer) clearInterval(this.checkTimer);
    this.reconciler.stop();
    this.guardJob.stop();
  }

  /** For reset: the bridge and VXLAN device go (containers' veths go with the bridge ports). */
  static async remove(ovsdb?: string): Promise<string[]> {
    await removeFirewall();
    await PortGuard.remove();
    await FastdpHealth.remove();
    const bridges = ovsdb ? await OvsSwitch.remove(ovsdb) : [];
    await removeBridge();
    return bridges;
  }
}
