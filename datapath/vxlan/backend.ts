// fastdp on the kernel: a VXLAN device (VNI 0x7765, UDP --port+1, no learning)
// as a port of the weft bridge, its forwarding table programmed from the control
// plane (fdb.ts), and each peer's path checked by heartbeats (health.ts). The
// kernel carries every frame; the router only programs. A VXLAN device speaks one
// underlay family, so an IPv6 underlay (--host an IPv6 address) gets a second
// device, isolated on the bridge from the first as every backend's port is.
import type { MeshView, PeerName } from '../../mesh/index.js';
import { ip, ipJson, linkExists } from '../../net/command.js';
import type { Backend, PathHealth, Programme } from '../backend.js';
import { VNI, ensurePort, linkPresent, linkState, type LinkInfo } from '../bridge.js';
import { FLOOD_MAC, VXLAN6_DEV, VXLAN_DEV, deviceFor, programFdb, readFdb, type FdbEntry } from './fdb.js';
import { FastdpHealth } from './health.js';

export class VxlanBackend implements Backend {
  readonly kind = 'vxlan';
  readonly port = VXLAN_DEV;
  readonly heartbeats: FastdpHealth;
  /** Each device's ifindex when plumb() last checked its settings with `ip`. */
  private readonly checkedIfindex = new Map<string, number | null>();
  /** Devices this run made (none of the kernel's entries from before a restart on them). */
  private readonly made = new Set<string>();

  constructor(
    mesh: MeshView,
    private readonly config: {
      vxlanPort: number;
      mtu: () => number;
      addrOf: (peer: PeerName) => string | undefined;
      /** An IPv6 underlay: peers at IPv6 addresses get the second device. */
      ipv6: boolean;
    },
  ) {
    this.heartbeats = new FastdpHealth(mesh, config.vxlanPort, config.mtu, config.addrOf, {
      devices: this.devices,
    });
  }

  /** Whether peers at IPv6 underlay addresses can be reached. */
  get underlay6(): boolean {
    return this.config.ipv6;
  }

  /** Its ports on the bridge: the device of each underlay family. */
  get ports(): string[] {
    return this.devices;
  }

  private get devices(): string[] {
    return this.config.ipv6 ? [VXLAN_DEV, VXLAN6_DEV] : [VXLAN_DEV];
  }

  portFor(addr: string): string {
    return deviceFor(addr);
  }

  async start(): Promise<void> {
    await this.plumb();
    this.heartbeats.start();
  }

  stop(): void {
    this.heartbeats.stop();
  }

  /** The devices, made again when their settings differ, as ports of the bridge. */
  async plumb(): Promise<string[]> {
    const fixed: string[] = [];
    for (const dev of this.devices) fixed.push(...(await this.plumbDevice(dev)));
    return fixed;
  }

  private async plumbDevice(dev: string): Promise<string[]> {
    const six = dev === VXLAN6_DEV;
    const what = six ? 'VXLAN device (IPv6 underlay)' : 'VXLAN device';
    // Its VNI and port are not in sysfs, and cannot change but by making the device again (a new
    // ifindex): the one checked last time, with the right MTU, needs no `ip`.
    const now = linkState(dev);
    if (now && now.ifindex === this.checkedIfindex.get(dev) && now.mtu === this.config.mtu())
      return ensurePort(dev, what);
    const fixed: string[] = [];
    // sysfs says it is there, or `ip` says whether it is.
    let vx = now || (await linkPresent(dev)) ? (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', dev]))[0] : null;
    if (
      vx &&
      (vx.linkinfo?.info_kind !== 'vxlan' ||
        vx.linkinfo.info_data?.id !== VNI ||
        vx.linkinfo.info_data?.port !== this.config.vxlanPort ||
        (six && !(await speaksIpv6(dev))))
    ) {
      await ip(['link', 'del', dev]);
      vx = null;
      fixed.push(`replaced ${what} with other settings`);
    }
    if (!vx) {
      // nolearning: the router programs every remote MAC; the kernel must not learn stale ones from floods.
      // `local ::` makes the device IPv6 (any source address): the kernel opens [::]:port for it alone.
      await ip([
        'link',
        'add',
        dev,
        'mtu',
        String(this.config.mtu()),
        'type',
        'vxlan',
        'id',
        String(VNI),
        'dstport',
        String(this.config.vxlanPort),
        ...(six ? ['local', '::'] : []),
        'nolearning',
      ]);
      fixed.push(`created ${what}`);
      this.made.add(dev);
    } else if (vx.mtu !== this.config.mtu()) await ip(['link', 'set', dev, 'mtu', String(this.config.mtu())]);
    this.checkedIfindex.set(dev, linkState(dev)?.ifindex ?? null);
    return [...fixed, ...(await ensurePort(dev, what))];
  }

  /** A flood entry per peer and an entry per remote MAC, at the peer's underlay address, on its family's device. */
  async program(p: Programme): Promise<{ added: number; removed: number }> {
    const fdb: FdbEntry[] = [...new Set(p.peers.map((x) => x.addr))].map((dst) => ({ mac: FLOOD_MAC, dst }));
    for (const r of p.remote) fdb.push({ mac: r.mac, dst: r.addr });
    const total = { added: 0, removed: 0 };
    for (const dev of this.devices) {
      const r = await programFdb(
        fdb.filter((e) => deviceFor(e.dst) === dev),
        dev,
      );
      total.added += r.added;
      total.removed += r.removed;
    }
    return total;
  }

  health(peer: PeerName): PathHealth {
    const healthy = this.heartbeats.healthy(peer);
    return { healthy, reason: healthy ? null : this.heartbeats.reason(peer) };
  }

  async presumed(): Promise<string[]> {
    // A device this run made has no entries yet: no `bridge` process to read them.
    const entries = await this.fdb(this.devices.filter((dev) => !this.made.has(dev)));
    return entries.filter((e) => e.mac === FLOOD_MAC).map((e) => e.dst);
  }

  /** The devices' entries (by default both devices'). */
  async fdb(devices = this.devices): Promise<FdbEntry[]> {
    const out: FdbEntry[] = [];
    for (const dev of devices) if (linkState(dev)) out.push(...(await readFdb(dev)));
    return out;
  }

  /** For reset: the devices and the heartbeat counters go. */
  static async remove(): Promise<void> {
    await FastdpHealth.remove();
    for (const dev of [VXLAN_DEV, VXLAN6_DEV]) if (await linkExists(dev)) await ip(['link', 'del', dev]);
  }
}

/**
 * Whether a VXLAN device of ours is an IPv6 one. `ip -d link` shows no difference when the source
 * address is any, but its entries do: one with IPv4 entries is not, one with none costs nothing to
 * make again, and one with IPv6 entries is (made by this router before a restart: kept, so the
 * kernel goes on carrying traffic meanwhile).
 */
async function speaksIpv6(dev: string): Promise<boolean> {
  const entries = await readFdb(dev);
  return entries.length > 0 && entries.every((e) => e.dst.includes(':'));
}
