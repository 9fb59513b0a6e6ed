// fastdp on the kernel: one VXLAN device (VNI 0x7765, UDP --port+1, no learning)
// as a port of the weft bridge, its forwarding table programmed from the control
// plane (fdb.ts), and each peer's path checked by heartbeats (health.ts). The
// kernel carries every frame; the router only programs.
import type { MeshView, PeerName } from '../../mesh/index.js';
import { ip, ipJson, linkExists } from '../../net/command.js';
import type { Backend, PathHealth, Programme } from '../backend.js';
import { VNI, ensurePort, sysLink, type LinkInfo } from '../bridge.js';
import { FLOOD_MAC, VXLAN_DEV, programFdb, readFdb, type FdbEntry } from './fdb.js';
import { FastdpHealth } from './health.js';

export class VxlanBackend implements Backend {
  readonly kind = 'vxlan';
  readonly port = VXLAN_DEV;
  readonly heartbeats: FastdpHealth;
  /** The device's ifindex when plumb() last checked its settings with `ip`. */
  private checkedIfindex: number | null = null;

  constructor(
    mesh: MeshView,
    private readonly config: { vxlanPort: number; mtu: () => number; addrOf: (peer: PeerName) => string | undefined },
  ) {
    this.heartbeats = new FastdpHealth(mesh, config.vxlanPort, config.mtu, config.addrOf);
  }

  async start(): Promise<void> {
    await this.plumb();
    this.heartbeats.start();
  }

  stop(): void {
    this.heartbeats.stop();
  }

  /** The device, made again when its settings differ, as a port of the bridge. */
  async plumb(): Promise<string[]> {
    // Its VNI and port are not in sysfs, and cannot change but by making the device again (a new
    // ifindex): the one checked last time, with the right MTU, needs no `ip`.
    const now = sysLink(VXLAN_DEV);
    if (now && now.ifindex === this.checkedIfindex && now.mtu === this.config.mtu())
      return ensurePort(VXLAN_DEV, 'VXLAN device');
    const fixed: string[] = [];
    // sysfs says it is there, or `ip` says whether it is.
    let vx =
      now || (await linkExists(VXLAN_DEV))
        ? (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', VXLAN_DEV]))[0]
        : null;
    if (
      vx &&
      (vx.linkinfo?.info_kind !== 'vxlan' ||
        vx.linkinfo.info_data?.id !== VNI ||
        vx.linkinfo.info_data?.port !== this.config.vxlanPort)
    ) {
      await ip(['link', 'del', VXLAN_DEV]);
      vx = null;
      fixed.push('replaced VXLAN device with other settings');
    }
    if (!vx) {
      // nolearning: the router programs every remote MAC; the kernel must not learn stale ones from floods.
      await ip([
        'link',
        'add',
        VXLAN_DEV,
        'mtu',
        String(this.config.mtu()),
        'type',
        'vxlan',
        'id',
        String(VNI),
        'dstport',
        String(this.config.vxlanPort),
        'nolearning',
      ]);
      fixed.push('created VXLAN device');
    } else if (vx.mtu !== this.config.mtu()) await ip(['link', 'set', VXLAN_DEV, 'mtu', String(this.config.mtu())]);
    this.checkedIfindex = sysLink(VXLAN_DEV)?.ifindex ?? null;
    return [...fixed, ...(await ensurePort(VXLAN_DEV, 'VXLAN device'))];
  }

  /** A flood entry per peer and an entry per remote MAC, at the peer's underlay address. */
  program(p: Programme): Promise<{ added: number; removed: number }> {
    const fdb: FdbEntry[] = [...new Set(p.peers.map((x) => x.addr))].map((dst) => ({ mac: FLOOD_MAC, dst }));
    for (const r of p.remote) fdb.push({ mac: r.mac, dst: r.addr });
    return programFdb(fdb);
  }

  health(peer: PeerName): PathHealth {
    const healthy = this.heartbeats.healthy(peer);
    return { healthy, reason: healthy ? null : this.heartbeats.reason(peer) };
  }

  async presumed(): Promise<string[]> {
    return (await readFdb()).filter((e) => e.mac === FLOOD_MAC).map((e) => e.dst);
  }

  /** For reset: the device and the heartbeat counters go. */
  static async remove(): Promise<void> {
    await FastdpHealth.remove();
    if (await linkExists(VXLAN_DEV)) await ip(['link', 'del', VXLAN_DEV]);
  }
}
