// The datapath: the `weft` bridge and what is on it. It attaches and detaches
// containers (addresses from IPAM unless given), announces local endpoints,
// exposes the host, and keeps the bridge right; how other hosts' containers are
// reached is forwarding.ts (the overlay per peer, the backends), and the host's
// nftables tables are host-firewall.ts.
import { WeftError } from '../lib/errors.js';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { readCheckedList, type StateDir } from '../lib/json-file.js';
import { formatIp, parseCidr } from '../net/addr.js';
import type { Allocator } from '../ipam/allocator.js';
import { IPV4, IPV6, type IpFamily, type Position } from '../net/family.js';
import { formatCidr6, formatIp6, parseCidr6, type Addr6 } from '../net/addr6.js';
import type { MeshView, PeerName } from '../mesh/index.js';
import {
  attachContainer,
  containerExists,
  detachContainer,
  forgetNetns,
  hostIfName,
  namespaceInode,
  netnsPathOf,
  rememberNetns,
} from './attach.js';
import {
  BRIDGE,
  VXLAN_OVERHEAD,
  VXLAN_OVERHEAD6,
  bridgeMac,
  ensureBridge,
  removeBridge,
  underlayMtu,
} from './bridge.js';
import { OvsBackend } from './ovs/backend.js';
import { EndpointTable, endpointCodec, type Endpoint } from './endpoints.js';
import { canonicalCidr, canonicalCidr6, checkIfName } from '../net/validate.js';
import { ip, ipBatch, sysctl } from '../net/command.js';
import { Forwarding, type ForwardingOptions, type OverlayStatus } from './forwarding.js';
import { HostFirewall, type FirewallPart } from './host-firewall.js';
import { VxlanBackend } from './vxlan/backend.js';
import type { FdbEntry } from './vxlan/fdb.js';
import type { Sleeve } from './sleeve/sleeve.js';
import type { OvsSwitch } from './ovs/switch.js';
import { KernelCheck, type CheckResult, type KernelCheckStatus } from './kernel-check.js';
import { every, type Tick } from '../lib/ticker.js';

export type { OverlayStatus } from './forwarding.js';

const EXPOSE_ID = 'weft:expose';

export interface DatapathConfig extends ForwardingOptions {
  /** The data directory (endpoints.json, exposed.json) and who records failed writes. */
  state: StateDir;
  /** The router's own ports: never reachable from containers (datapath/firewall.ts). */
  routerPorts: { tcp: number[]; udp: number[] };
  /** With weft's DNS: its address on the bridge, and the resolv.conf containers get. */
  dns?: { ip: string; domain: string; ip6?: string };
  /** Overlay MTU; default: the underlay's minus the VXLAN overhead (of VXLAN over IPv6 with an IPv6 underlay). */
  mtu?: number;
  /** What another component adds to the firewall table (security groups: policy/engine.ts), and hears when it is written. */
  firewallPart?: FirewallPart;
  /** Told when a container is detached or found gone (DNS drops its names). */
  containerGone?: (container: string) => void;
  /**
   * IPv6 addresses for containers (--ipv6): with it, the overlay carries IPv6 and a container gets an
   * address of each family unless its attach asks for IPv4 only. (Its IPv6 addresses are freed by
   * whoever hears containerGone.)
   */
  ipam6?: Allocator<Addr6>;
  /** IPv6 exposed subnets leave the host masqueraded (--ipv6-nat); routed otherwise. */
  ipv6Nat?: boolean;
}

export class Datapath {
  readonly endpoints: EndpointTable;
  readonly forwarding: Forwarding;
  readonly firewall: HostFirewall;
  mtu = 1450;
  private stopped = false;
  /** Runs check() when the kernel reports a change underneath, and every 30 s (kernel-check.ts). */
  private readonly kernelCheck = new KernelCheck(
    () => this.check(),
    undefined,
    undefined,
    (why) =>
      this.mesh.log.warn({ why }, 'not told of kernel changes any more: the bridge and firewall are checked every 5 s'),
  );
  /** Local containers whose namespace is gone, looked for every 5 s (kernelCheck's check looks too). */
  private goneTimer: Tick | null = null;
  private readonly counters = { repairs: 0, errors: 0 };
  lastError: string | null = null;
  /** Addresses this host has on the overlay (weft expose), "ip/prefix". */
  exposed: string[] = [];
  /** Its IPv6 addresses there (weft expose with --ipv6), "ip/prefix". */
  exposed6: string[] = [];
  /** MACs bound to a port by an attach that has not reached the endpoint table yet: MAC -> container. */
  private readonly attachingMacs = new Map<string, string>();

  constructor(
    private readonly mesh: MeshView,
    private readonly ipam: Allocator,
    readonly config: DatapathConfig,
  ) {
    this.endpoints = new EndpointTable(mesh);
    this.forwarding = new Forwarding(mesh, this.endpoints, {
      mtu: () => this.mtu,
      vxlanPort: config.vxlanPort,
      sleevePort: config.sleevePort,
      fastdp: config.fastdp,
      sleeve: config.sleeve,
      encrypt: config.encrypt,
      ipv6: config.ipam6 !== undefined,
      underlay6: config.underlay6 === true,
      ovs: config.ovs,
      programmed: () => this.firewall.syncUnderlay(),
      error: (m) => this.noteError(m),
    });
    this.firewall = new HostFirewall({
      state: () => ({
        exposed: subnetsOf(IPV4, this.exposed),
        exposed6: this.exposedSubnets6(),
        nat66: config.ipv6Nat === true,
        hostAddrs6: this.hostAddrs6(),
        host: {
          dns: config.dns ? { ip: config.dns.ip, port: 53, ...(this.dns6 ? { ip6: this.dns6 } : {}) } : null,
          routerPorts: config.routerPorts,
        },
        underlay: this.forwarding.underlayPeers(),
      }),
      bindings: () => {
        const limitedIn = config.firewallPart?.limitedIn?.();
        return this.endpoints.local.map((e) => ({
          port: hostIfName(e.container),
          mac: e.mac,
          addrs: e.cidrs.map((c) => c.split('/')[0]),
          // Without --ipv6 (a router restarted without it), no port is bound to IPv6: it drops it all.
          addrs6: config.ipam6 ? (e.cidrs6 ?? []).map((c) => c.split('/')[0]) : [],
          limitedIn: limitedIn?.has(e.container) ?? false,
        }));
      },
      guard: {
        overlayIpv6: config.ipam6 !== undefined,
        exposed6: () => this.exposedSubnets6(),
        hostAddrs6: () => this.hostAddrs6(),
        ...(this.dns6 ? { dns6: this.dns6 } : {}),
        ...(config.ipam6 ? { allocRange6: formatCidr6(config.ipam6.config.range) } : {}),
      },
      part: config.firewallPart,
      log: mesh.log,
      error: (m) => this.noteError(m),
      repaired: () => this.counters.repairs++,
    });
    this.endpoints.onChange(() => this.firewall.scheduleGuard());
  }

  // ---- what status and other components read

  /** The DNS server's IPv6 address on the bridge: with --ipv6 and DNS there. */
  private get dns6(): string | undefined {
    return this.config.ipam6 ? this.config.dns?.ip6 : undefined;
  }

  /** The host's own IPv6 addresses on the bridge. */
  private hostAddrs6(): string[] {
    return [...this.exposed6.map((c) => c.split('/')[0]), ...(this.dns6 ? [this.dns6] : [])];
  }

  /** The IPv6 subnets the host is exposed to ("start/prefix"). */
  private exposedSubnets6(): string[] {
    return subnetsOf(IPV6, this.exposed6);
  }

  /** fdb entries programmed (all backends), repairs of the bridge and the tables, errors. */
  get stats(): { fdbAdded: number; fdbRemoved: number; repairs: number; errors: number } {
    return { ...this.forwarding.stats, ...this.counters };
  }

  /** The check of the bridge and the firewall: on the kernel's notifications or every 5 s, and how often it ran. */
  get checks(): KernelCheckStatus {
    return this.kernelCheck.status();
  }

  /** Whether the overlay carries IPv6 (--ipv6). */
  get carriesIpv6(): boolean {
    return this.config.ipam6 !== undefined;
  }

  /** The port guard (its last error says whether containers are bound). */
  get guard() {
    return this.firewall.guard;
  }

  get sleeve(): Sleeve | null {
    return this.forwarding.sleeve;
  }

  get sleeveError(): string | null {
    return this.forwarding.sleeveError;
  }

  /** The OVS bridge, with --datapath ovs. */
  get ovs(): OvsSwitch | null {
    return this.forwarding.tunnel instanceof OvsBackend ? this.forwarding.tunnel.switch : null;
  }

  overlayStatus(peer: PeerName): OverlayStatus {
    return this.forwarding.overlayStatus(peer);
  }

  whyNotFastdp(peer: PeerName): string | null {
    return this.forwarding.whyNotFastdp(peer);
  }

  /** Rewrites the firewall table now (the policy's rules changed). */
  refreshFirewall(): Promise<void> {
    return this.firewall.refresh();
  }

  /** Binds a container port now, before it joins the bridge (attach, and the Docker plugin's CreateEndpoint). */
  bindPort(hostIf: string, mac: string, cidrs: string[], cidrs6: string[] = []): Promise<void> {
    return this.firewall.bindPort(hostIf, mac, cidrs, this.config.ipam6 ? cidrs6 : []);
  }

  async fdb(): Promise<FdbEntry[]> {
    return this.forwarding.fdb();
  }

  private get statePath(): string {
    return join(this.config.state.dir, 'endpoints.json');
  }

  async start(): Promise<void> {
    // Over an IPv6 underlay VXLAN's headers are 20 bytes longer: the overlay leaves room for them.
    this.mtu =
      this.config.mtu ?? (await underlayMtu()) - (this.forwarding.tunnel.underlay6 ? VXLAN_OVERHEAD6 : VXLAN_OVERHEAD);
    await ensureBridge(this.bridgeConfig());
    await this.ensureDnsAddress();
    await this.forwarding.start();
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
      this.mesh.log.info(
        { container: e.container },
        'attached container is gone; forgetting it and freeing its addresses',
      );
      await detachContainer(e.container, e.ifname).catch(() => undefined); // its leftovers: host veth, resolv.conf
      await this.release(e);
    }
    this.setLocal(alive);
    this.exposed = this.loadExposed();
    // Without --ipv6 now, the host's IPv6 overlay addresses are not put back (they go from the bridge
    // with its IPv6); they are freed when the router carries IPv6 again and hides them.
    this.exposed6 = this.config.ipam6 ? this.loadExposed6() : [];
    await this.firewall.sync(true);
    // After the rules (only replies into an exposed subnet): the addresses, and forwarding.
    if (this.exposed6.length > 0) await this.ensureExposed6();
    this.forwarding.schedule();
    // Repair the bridge and the firewall if someone changes them underneath.
    this.kernelCheck.start();
    // A namespace can go without a notification (its veth stays while another process holds it):
    // looked for on its own, cheaply, every 5 s.
    this.goneTimer = every(5_000, () => {
      if (this.endpoints.local.length > 0) void this.forgetGone().catch((err: Error) => this.noteError(err.message));
    });
    if (this.kernelCheck.notWatching)
      this.mesh.log.info(
        { why: this.kernelCheck.notWatching },
        'not told of kernel changes: the bridge and firewall are checked every 5 s',
      );
  }

  /**
   * The check of what the datapath keeps in the kernel; never rejects. Failed after an error, and
   * when an attach was under way (its port is bound before it is an endpoint: the firewall is not
   * compared then, and the check runs again 5 s later).
   */
  private async check(): Promise<CheckResult> {
    const errors = this.counters.errors;
    const repairs = this.counters.repairs;
    let whole = true;
    try {
      whole = await this.checkOnce();
    } catch (err) {
      this.noteError(`check failed: ${(err as Error).message}`);
    }
    return { repaired: this.counters.repairs !== repairs, failed: this.counters.errors !== errors || !whole };
  }

  /** Containers that went away take their veths with them: forget their endpoints. */
  private async forgetGone(): Promise<void> {
    const gone = this.endpoints.local.filter((e) => !containerExists(e.container, e.nsInode));
    if (gone.length === 0) return;
    this.setLocal(this.endpoints.local.filter((e) => !gone.includes(e)));
    for (const e of gone) {
      await detachContainer(e.container, e.ifname).catch(() => undefined); // its leftovers: host veth, resolv.conf
      await this.release(e);
    }
  }

  /** Whether it compared everything (not the firewall while an attach is under way). */
  private async checkOnce(): Promise<boolean> {
    if (this.stopped) return true;
    await this.forgetGone();
    const attaching = this.attachingMacs.size > 0;
    if (!attaching) await this.firewall.sync(false);
    try {
      const fixed = [...(await ensureBridge(this.bridgeConfig())), ...(await this.forwarding.plumb())];
      if (fixed.length > 0) {
        await this.ensureDnsAddress();
        // A bridge made again has none of the host's overlay addresses: they go back on it.
        await ipBatch(this.exposed.map((a) => `addr replace ${a} dev ${BRIDGE}`));
        if (this.exposed6.length > 0) await this.ensureExposed6();
        this.counters.repairs++;
        this.mesh.log.warn({ fixed }, 'bridge repaired');
        this.forwarding.schedule();
      }
    } catch (err) {
      this.noteError(`bridge check failed: ${(err as Error).message}`);
    }
    return !attaching;
  }

  private bridgeConfig() {
    return { mac: bridgeMac(this.mesh.name), mtu: this.mtu, ipv6: this.config.ipam6 !== undefined };
  }

  /** The DNS server's address on the bridge; host routes back to local containers so replies find them. */
  private async ensureDnsAddress(): Promise<void> {
    const dns = this.config.dns;
    if (!dns) return;
    await ip(['addr', 'replace', `${dns.ip}/32`, 'dev', BRIDGE]);
    // Best effort: a bridge without IPv6 (a read-only /proc/sys) leaves the server IPv4 only, and says so.
    if (this.dns6)
      await ip(['addr', 'replace', `${this.dns6}/128`, 'dev', BRIDGE, 'nodad']).catch((err: Error) =>
        this.noteError(`the DNS server's IPv6 address: ${err.message}`),
      );
    await this.routeBack(this.endpoints.local.flatMap((e) => [...e.cidrs, ...(e.cidrs6 ?? [])]));
  }

  private noteError(msg: string): void {
    this.counters.errors++;
    // What failed may have left the kernel short of what the check compares: checked again in 5 s.
    this.kernelCheck.retrySoon();
    this.lastError = msg;
    this.mesh.log.error({ err: msg }, 'datapath error');
  }

  /** Programs the backends now (tests and the API wait on it). */
  reconcile(): Promise<void> {
    return this.forwarding.program();
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

  private get exposed6Path(): string {
    return join(this.config.state.dir, 'exposed6.json');
  }

  private loadExposed6(): string[] {
    return readCheckedList(this.exposed6Path, (c) => canonicalCidr6(c, true, 'exposed address'));
  }

  private saveExposed6(): void {
    this.config.state.writes.write(this.exposed6Path, this.exposed6);
  }

  /** Gives the host an address on the overlay (from IPAM unless given) and NAT to the outside. Idempotent. */
  async expose(cidr?: string): Promise<string[]> {
    const ipam6 = this.config.ipam6;
    if (cidr?.includes(':')) {
      if (!ipam6)
        throw new WeftError(
          'invalid',
          'the host gets an IPv6 address on the overlay only when the router runs with --ipv6 (this one carries IPv4 only)',
        );
      const p = parseCidr6(canonicalCidr6(cidr, true, 'the address to expose'), true);
      await ipam6.claim(EXPOSE_ID, p.addr, { start: p.start, prefix: p.prefix });
      await this.addExposed6(`${formatIp6(p.addr)}/${p.prefix}`);
    } else if (cidr) {
      const p = parseCidr(canonicalCidr(cidr, true, 'the address to expose'), true);
      await this.ipam.claim(EXPOSE_ID, p.addr, { start: p.start, prefix: p.prefix });
      await this.addExposed(`${formatIp(p.addr)}/${p.prefix}`);
    } else {
      // An address of each family the router carries, in the default subnets.
      if (this.exposed.length === 0) {
        const got = await this.ipam.allocate(EXPOSE_ID);
        await this.addExposed(`${formatIp(got.addr)}/${got.prefix}`);
      }
      if (ipam6 && this.exposed6.length === 0) {
        const got = await ipam6.allocate(EXPOSE_ID);
        await this.addExposed6(`${formatIp6(got.addr)}/${got.prefix}`);
      }
    }
    return [...this.exposed, ...this.exposed6];
  }

  /** The host's IPv6 address in a container's IPv6 subnet, exposed if it was not (gatewayFor's IPv6 half). */
  async gatewayFor6(containerCidr6: string): Promise<string> {
    const ipam6 = this.config.ipam6;
    if (!ipam6) throw new WeftError('invalid', 'no IPv6 on this router (--ipv6)');
    return gatewayIn(IPV6, this.exposed6, ipam6, containerCidr6, (a) => this.addExposed6(a));
  }

  private async addExposed6(addr: string): Promise<void> {
    if (!this.exposed6.includes(addr)) {
      this.exposed6.push(addr);
      this.saveExposed6();
    }
    // The rules first (only replies into the subnet), then the address and forwarding.
    await this.firewall.sync(true);
    await this.ensureExposed6();
  }

  /** The IPv6 exposed addresses on the bridge (no duplicate address detection: IPAM made them unique), and IPv6 forwarding. */
  private async ensureExposed6(): Promise<void> {
    await ipBatch(this.exposed6.map((a) => `addr replace ${a} dev ${BRIDGE} nodad`));
    await enableIpv6Forwarding().catch((err: Error) => this.noteError(`cannot enable IPv6 forwarding: ${err.message}`));
  }

  /**
   * The host's address in a container address's subnet, exposed (as `weft expose` does) if it was
   * not: the gateway of containers attached with one. One per host and subnet, from IPAM.
   */
  gatewayFor(containerCidr: string): Promise<string> {
    return gatewayIn(IPV4, this.exposed, this.ipam, containerCidr, (a) => this.addExposed(a));
  }

  private async addExposed(addr: string): Promise<void> {
    if (!this.exposed.includes(addr)) {
      await ip(['addr', 'replace', addr, 'dev', BRIDGE]);
      this.exposed.push(addr);
      this.saveExposed();
    }
    // The host forwards between the overlay and its other links for the exposed subnets.
    await sysctl('net.ipv4.ip_forward', '1').catch((err: Error) =>
      this.noteError(`cannot enable forwarding: ${err.message}`),
    );
    await this.firewall.sync(true);
  }

  /** Removes the host's overlay addresses (all, or one) and their NAT; frees them in IPAM. */
  async hide(cidr?: string): Promise<string[]> {
    const match = (a: string) => !cidr || a === cidr || a.split('/')[0] === cidr.split('/')[0];
    const gone = this.exposed.filter(match);
    const gone6 = this.exposed6.filter(match);
    for (const a of gone) {
      await ip(['addr', 'del', a, 'dev', BRIDGE]).catch(() => undefined);
      await this.ipam.free(EXPOSE_ID, parseCidr(a, true).addr).catch(() => undefined);
    }
    for (const a of gone6) {
      await ip(['-6', 'addr', 'del', a, 'dev', BRIDGE]).catch(() => undefined);
      await this.config.ipam6?.free(EXPOSE_ID, parseCidr6(a, true).addr).catch(() => undefined);
    }
    this.exposed = this.exposed.filter((a) => !gone.includes(a));
    this.exposed6 = this.exposed6.filter((a) => !gone6.includes(a));
    this.saveExposed();
    // Without --ipv6 the list was not loaded: what it holds stays for a router that carries IPv6 again.
    if (this.config.ipam6) this.saveExposed6();
    await this.firewall.sync(true);
    return [...gone, ...gone6];
  }

  /** Endpoints saved by the last run: each checked as a peer's would be, with the fields kept only here. */
  private loadLocal(): Endpoint[] {
    return readCheckedList(this.statePath, (x) => {
      const e = x as Endpoint;
      const ep = endpointCodec.fromWire(endpointCodec.toWire(e));
      if (e.netns !== undefined && typeof e.netns !== 'string') throw new Error('netns is not a path');
      if (e.ifname !== undefined) checkIfName(e.ifname);
      if (e.nsInode !== undefined && !Number.isSafeInteger(e.nsInode)) throw new Error('nsInode is not a number');
      // Restarted without --ipv6: the container's IPv6 addresses are not its own on the overlay any more
      // (its port drops IPv6; they are freed with the container).
      const { cidrs6, ...rest } = ep;
      return {
        ...(this.config.ipam6 && cidrs6 ? { ...rest, cidrs6 } : rest),
        ...(e.netns !== undefined ? { netns: e.netns } : {}),
        ...(e.ifname !== undefined ? { ifname: e.ifname } : {}),
        ...(e.nsInode !== undefined ? { nsInode: e.nsInode } : {}),
      };
    });
  }

  private setLocal(endpoints: Endpoint[]): void {
    this.config.state.writes.write(this.statePath, endpoints);
    this.endpoints.setLocal(endpoints);
  }

  /**
   * Attaches a container; with no addresses given, one comes from IPAM. Returns its endpoint.
   * A CNI container (`cni:ID`) comes with its namespace path and interface name. With `gateway`,
   * the container's default route goes through this host (its address in the container's subnet,
   * exposed: NAT to the outside, and the host reaches the container), and its bridge port hairpins
   * (a container reaches itself through a translation on the host, e.g. a published port). With
   * `fresh`, an interface of that name already in the namespace is an error (CNI ADD).
   */
  async attach(
    container: string,
    cidrs: string[],
    subnet?: string,
    cni?: { netns: string; ifname: string },
    groups?: string[],
    opts: { gateway?: boolean; fresh?: boolean; only?: 'ipv4' | 'ipv6' } = {},
  ): Promise<Endpoint & { gateway?: string; gateway6?: string }> {
    const { gateway = false, fresh = false, only } = opts;
    if (cni) rememberNetns(container, cni.netns);
    netnsPathOf(container); // a clear error before anything is allocated
    const ipam6 = this.config.ipam6;
    const isV6 = (c: string) => c.includes(':');
    const subnet6 = subnet !== undefined && isV6(subnet) ? subnet : undefined;
    const subnet4 = subnet !== undefined && !isV6(subnet) ? subnet : undefined;
    if (!ipam6 && (cidrs.some(isV6) || subnet6 !== undefined || only === 'ipv6'))
      throw new WeftError(
        'invalid',
        'containers get IPv6 addresses only when the router runs with --ipv6 (this one carries IPv4 only); IPv6 addresses can be allocated with weft ipam alloc --ipv6',
      );
    const prev0 = this.endpoints.local.find((e) => e.container === container);
    if (only === 'ipv4' && (cidrs.some(isV6) || subnet6 !== undefined))
      throw new WeftError('invalid', 'IPv4 only, and an IPv6 address or subnet: choose one');
    if (only === 'ipv6' && (cidrs.some((c) => !isV6(c)) || subnet4 !== undefined))
      throw new WeftError('invalid', 'IPv6 only, and an IPv4 address or subnet: choose one');
    // A family is added to a container by a re-attach, never taken away (detach first).
    if (only === 'ipv4' && (prev0?.cidrs6 ?? []).length > 0)
      throw new WeftError(
        'conflict',
        `${container} is attached with IPv6 addresses already; detach it first to attach it IPv4 only`,
      );
    if (only === 'ipv6' && (prev0?.cidrs ?? []).length > 0)
      throw new WeftError(
        'conflict',
        `${container} is attached with IPv4 addresses already; detach it first to attach it IPv6 only`,
      );
    let addrs = cidrs.filter((c) => !isV6(c)).map((c) => canonicalCidr(c, true, 'address'));
    const given6 = cidrs.filter(isV6).map((c) => canonicalCidr6(c, true, 'address'));
    const net = subnet4 === undefined ? undefined : parseCidr(canonicalCidr(subnet4, false, 'subnet'));
    const net6 = subnet6 === undefined ? undefined : parseCidr6(canonicalCidr6(subnet6, false, 'subnet'));
    // Each family the router carries, unless asked for one: an IPv6 address or subnet named alone still
    // brings an IPv4 address (dual-stack), and one named with --ipv6-only does not. A container attached
    // IPv6 only before stays so when it is attached again without the option.
    const wasOnly6 = prev0 !== undefined && prev0.cidrs.length === 0 && (prev0.cidrs6 ?? []).length > 0;
    const want4 = only !== 'ipv6' && !(wasOnly6 && addrs.length === 0 && subnet4 === undefined);
    const want6 = ipam6 !== undefined && only !== 'ipv4';
    if (want4 && addrs.length === 0) {
      const got = await this.ipam.allocate(container, net);
      addrs = [`${formatIp(got.addr)}/${got.prefix}`];
    } else if (want4) {
      const claimed: string[] = [];
      try {
        for (const c of addrs) {
          const p = parseCidr(c, true);
          await this.ipam.claim(container, p.addr, { start: p.start, prefix: p.prefix });
          claimed.push(c);
        }
      } catch (err) {
        await this.freeNew(container, claimed, []); // the ones claimed before the one that failed
        throw err;
      }
    }
    const addrs6: string[] = [];
    try {
      if (want6 && given6.length === 0 && (prev0?.cidrs6 ?? []).length === 0) {
        const got = await ipam6.allocate(container, net6);
        addrs6.push(`${formatIp6(got.addr)}/${got.prefix}`);
      } else if (want6)
        for (const c of given6) {
          const p = parseCidr6(c, true);
          await ipam6.claim(container, p.addr, { start: p.start, prefix: p.prefix });
          addrs6.push(c);
        }
    } catch (err) {
      await this.freeNew(container, addrs, addrs6); // and the IPv6 ones claimed before the one that failed
      throw err;
    }
    const dns = this.config.dns;
    const prevCidrs = prev0?.cidrs ?? [];
    const all6 = want6 ? [...new Set([...(prev0?.cidrs6 ?? []), ...addrs6])] : [];
    const ipv4 = prevCidrs.length > 0 || addrs.length > 0;
    const taking = new Set<string>();
    let mac: string;
    let gw: string | undefined;
    let gw6: string | undefined;
    try {
      if (gateway && addrs.length > 0) gw = await this.gatewayFor(addrs[0]);
      if (gateway && all6.length > 0) gw6 = await this.gatewayFor6(all6[0]);
      ({ mac } = await attachContainer(
        container,
        addrs,
        this.mtu,
        (hostIf, m) => {
          this.checkMacIsOwn(container, m);
          this.attachingMacs.set(m, container);
          taking.add(m);
          return this.firewall.bindPort(hostIf, m, [...prevCidrs, ...addrs], all6, container);
        },
        {
          ...(dns && {
            dns: {
              ip: dns.ip,
              bridgeMac: bridgeMac(this.mesh.name),
              ...(this.dns6 ? { ip6: this.dns6 } : {}),
              resolvConf: `# written by weft attach\n${ipv4 ? `nameserver ${dns.ip}\n` : ''}${this.dns6 && all6.length > 0 ? `nameserver ${this.dns6}\n` : ''}search ${dns.domain.replace(/\.$/, '')}\n`,
            },
          }),
          ...(cni && { ifname: cni.ifname }),
          ...(gw !== undefined && { gateway: gw }),
          ...(gw6 !== undefined && { gateway6: gw6 }),
          fresh,
          hostLines: this.routeBackLines([...addrs, ...addrs6]),
          cidrs6: all6,
          ipv4,
        },
      ));
    } catch (err) {
      // A container that was not attached before keeps no address from an attach that failed (a
      // full bridge, a namespace gone meanwhile); one that was keeps what it had.
      await this.freeNew(container, addrs, addrs6);
      throw err;
    } finally {
      // What this attach took (not another one's of the same container): from here to setLocal below
      // nothing awaits, so no other attach looks between.
      for (const m of taking) if (this.attachingMacs.get(m) === container) this.attachingMacs.delete(m);
    }
    const prev = this.endpoints.local.find((e) => e.container === container);
    const g = groups ?? prev?.groups;
    const inode = namespaceInode(netnsPathOf(container));
    const cidrs6 = [...new Set([...(prev?.cidrs6 ?? []), ...addrs6])];
    const ep: Endpoint = {
      container,
      mac,
      cidrs: [...new Set([...(prev?.cidrs ?? []), ...addrs])],
      ...(cidrs6.length > 0 ? { cidrs6 } : {}),
      ...(g && g.length > 0 ? { groups: [...new Set(g)].sort() } : {}),
      ...(cni ? { netns: cni.netns, ifname: cni.ifname } : {}),
      ...(inode !== null ? { nsInode: inode } : {}),
    };
    this.setLocal([...this.endpoints.local.filter((e) => e.container !== container), ep]);
    return { ...ep, ...(gw ? { gateway: gw } : {}), ...(gw6 ? { gateway6: gw6 } : {}) };
  }

  /** Frees what an attach that failed allocated, keeping what the container had before it. */
  private async freeNew(container: string, addrs: string[], addrs6: string[]): Promise<void> {
    const prev = this.endpoints.local.find((e) => e.container === container);
    const had = new Set([...(prev?.cidrs ?? []), ...(prev?.cidrs6 ?? [])]);
    for (const a of addrs)
      if (!had.has(a)) await this.ipam.free(container, parseCidr(a, true).addr).catch(() => undefined);
    for (const a of addrs6)
      if (!had.has(a)) await this.config.ipam6?.free(container, parseCidr6(a, true).addr).catch(() => undefined);
  }

  /**
   * A re-attach takes the MAC the container's interface has now, and a container with NET_ADMIN can
   * change it: one that is another endpoint's (here or on a peer) would be advertised and bound as
   * this container's. Refused as a conflict before anything is bound. (The kernel refuses multicast
   * and zero MACs on the interface itself.)
   */
  private checkMacIsOwn(container: string, mac: string): void {
    const busy = this.attachingMacs.get(mac);
    if (busy !== undefined && busy !== container)
      throw new WeftError(
        'conflict',
        `the interface of ${container} has MAC ${mac}, which ${busy} is being attached with`,
      );
    const self = this.mesh.name;
    const other = this.endpoints.all().find((e) => e.mac === mac && (e.peer !== self || e.container !== container));
    if (other)
      throw new WeftError(
        'conflict',
        `the interface of ${container} has MAC ${mac}, which is ${other.peer === self ? `${other.container}'s on this host` : `a container's on peer ${other.peer}`}`,
      );
  }

  /** With DNS on the bridge: host routes back to local container addresses, so the server's replies find them. */
  private routeBackLines(cidrs: string[]): string[] {
    const dns = this.config.dns;
    if (!dns) return [];
    const dns6 = this.dns6;
    return cidrs.flatMap((c) => {
      const a = c.split('/')[0];
      if (!a.includes(':')) return [`route replace ${a}/32 dev ${BRIDGE} src ${dns.ip}`];
      return dns6 ? [`route replace ${a}/128 dev ${BRIDGE} src ${dns6}`] : [];
    });
  }

  /** Removes those routes (a container gone). */
  private async routesBackGone(e: { cidrs: string[]; cidrs6?: string[] }): Promise<void> {
    if (!this.config.dns) return;
    const lines = [
      ...e.cidrs.map((c) => `route del ${c.split('/')[0]}/32 dev ${BRIDGE}`),
      ...(this.dns6 ? (e.cidrs6 ?? []).map((c) => `route del ${c.split('/')[0]}/128 dev ${BRIDGE}`) : []),
    ];
    await ipBatch(lines).catch(() => undefined);
  }

  /** The same routes on their own (best effort: without the DNS address on the bridge they cannot be made). */
  private async routeBack(cidrs: string[]): Promise<void> {
    await ipBatch(this.routeBackLines(cidrs)).catch(() => undefined);
  }

  /**
   * Announces an endpoint someone else plumbed (the Docker network plugin: a veth on the bridge that
   * Docker moves into the container) so peers learn where its MAC lives.
   */
  async plug(
    key: string,
    mac: string,
    cidrs: string[],
    groups: string[] = [],
    cidrs6: string[] = [],
  ): Promise<Endpoint> {
    await this.routeBack(cidrs);
    const ep: Endpoint = {
      container: key,
      mac,
      cidrs,
      ...(cidrs6.length > 0 && this.config.ipam6 ? { cidrs6 } : {}),
      ...(groups.length > 0 ? { groups: [...new Set(groups)].sort() } : {}),
    };
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
    this.setLocal(
      this.endpoints.local.map((e) => (e === ep ? { ...rest, ...(next.length > 0 ? { groups: next } : {}) } : e)),
    );
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
    await this.routesBackGone(ep);
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
    await this.config.ipam6?.free(container).catch(() => undefined);
  }

  /** Detaches a container and frees its addresses. */
  async detach(container: string): Promise<Endpoint> {
    const ep = this.endpoints.local.find((e) => e.container === container);
    if (!ep) throw new WeftError('not-found', `container ${container} is not attached here`);
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
    await this.routesBackGone(e);
    await this.ipam.free(e.container).catch(() => undefined);
    this.config.containerGone?.(e.container);
  }

  /** Stops all programming of the kernel (what is programmed stays, so traffic keeps flowing). */
  stop(): void {
    this.stopped = true;
    this.endpoints.stop();
    this.forwarding.stop();
    this.firewall.stop();
    this.kernelCheck.stop();
    this.goneTimer?.stop();
  }

  /** For reset: the tables, the bridge and the backends' devices go (containers' veths go with the bridge ports). */
  static async remove(ovsdb?: string): Promise<string[]> {
    await HostFirewall.remove();
    await VxlanBackend.remove();
    const bridges = ovsdb ? await OvsBackend.remove(ovsdb) : [];
    await removeBridge();
    return bridges;
  }
}

/**
 * Turns IPv6 forwarding on (for exposed IPv6 subnets), once. A host that forwards IPv6 ignores router
 * advertisements on interfaces whose accept_ra is 1, and would lose a default route it learnt from
 * them: those (and the default for interfaces made later) get accept_ra 2 first, which keeps taking
 * them while forwarding.
 */
async function enableIpv6Forwarding(): Promise<void> {
  const base = '/proc/sys/net/ipv6/conf';
  if (readFileSync(`${base}/all/forwarding`, 'utf8').trim() === '1') return;
  for (const dev of readdirSync(base)) {
    if (dev === 'all' || dev === 'lo') continue;
    try {
      if (readFileSync(`${base}/${dev}/accept_ra`, 'utf8').trim() === '1')
        await sysctl(`net/ipv6/conf/${dev}/accept_ra`, '2');
    } catch {
      // an interface that went meanwhile
    }
  }
  await sysctl('net.ipv6.conf.all.forwarding', '1');
}

/** The subnets of the host's exposed addresses ("ip/prefix" -> "start/prefix", once each). */
function subnetsOf<A extends Position>(f: IpFamily<A>, exposed: string[]): string[] {
  return [...new Set(exposed.map((c) => f.formatCidr(f.parseCidr(c, true))))];
}

/**
 * The host's address in a container address's subnet, of one family: the exposed one there, or one
 * allocated (as weft:expose) and exposed through `expose`.
 */
async function gatewayIn<A extends Position>(
  f: IpFamily<A>,
  exposed: string[],
  ipam: Allocator<A>,
  containerCidr: string,
  expose: (addr: string) => Promise<void>,
): Promise<string> {
  const c = f.parseCidr(containerCidr, true);
  const same = exposed.find((a) => {
    const e = f.parseCidr(a, true);
    return e.start === c.start && e.prefix === c.prefix;
  });
  if (same) return same.split('/')[0];
  const got = await ipam.allocate(EXPOSE_ID, { start: c.start, prefix: c.prefix });
  await expose(`${f.formatIp(got.addr)}/${got.prefix}`);
  return f.formatIp(got.addr);
}
