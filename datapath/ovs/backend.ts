// fastdp on Open vSwitch (--datapath ovs): weft is the controller of an OVS
// bridge (switch.ts, over OVSDB and OpenFlow 1.3) and turns the same programme the
// kernel VXLAN backend takes into flows (flows.ts). A veth pair joins it to the
// weft Linux bridge in the VXLAN device's place. Heartbeats as with the kernel
// device, counted by a flow per peer.
import type { MeshView, PeerName } from '../../mesh/index.js';
import { ethtool, ip, ipJson, linkExists } from '../../net/command.js';
import type { Backend, PathHealth, Programme } from '../backend.js';
import { VNI, bridgeMac, ensurePort, linkState, type LinkInfo } from '../bridge.js';
import { VXLAN_DEV } from '../vxlan/fdb.js';
import { FastdpHealth } from '../vxlan/health.js';
import { desiredFlows } from './flows.js';
import { OvsSwitch, type OvsConfig } from './switch.js';

/** The veth pair: this end is a port of the Linux bridge, its peer a port of OVS's bridge. */
const OVS_VETH_BRIDGE_END = 'weftovs-br';
const OVS_VETH_OVS_END = 'weftovs-dp';

export class OvsBackend implements Backend {
  readonly kind = 'ovs';
  readonly port = OVS_VETH_BRIDGE_END;
  /** An IPv6 underlay (--host IPv6 or ::): its one VXLAN port (remote_ip=flow) reaches peers of both families, each flow setting tun_dst or tun_ipv6_dst. */
  get underlay6(): boolean {
    return this.config.ipv6;
  }
  readonly switch: OvsSwitch;
  readonly heartbeats: FastdpHealth;
  /** The bridge end's ifindex when plumb() last checked the pair with `ip`. */
  private checkedIfindex: number | null = null;

  constructor(
    mesh: MeshView,
    private readonly config: OvsConfig & {
      mtu: () => number;
      addrOf: (peer: PeerName) => string | undefined;
      onReconnect: () => void;
      ipv6: boolean;
    },
  ) {
    this.switch = new OvsSwitch(config, mesh.log, config.onReconnect);
    this.heartbeats = new FastdpHealth(mesh, config.vxlanPort, config.mtu, config.addrOf, {
      counter: (peers) => this.switch.heartbeatCounts(peers),
    });
  }

  get ports(): string[] {
    return [this.port];
  }

  portFor(): string {
    return this.port;
  }

  async start(): Promise<void> {
    await this.plumb();
    await this.switch.start();
    this.heartbeats.start();
  }

  stop(): void {
    this.heartbeats.stop();
    this.switch.stop();
  }

  /**
   * The veth pair in the VXLAN device's place, with the same port flags. Offloads are off on both
   * ends: OVS's userspace datapath reads frames from the veth as they are, and segmentation-offloaded
   * TCP frames larger than the MTU would be lost on the way (../shared/reference/measurements.md,
   * "Open vSwitch works here in userspace").
   */
  async plumb(): Promise<string[]> {
    const mtu = this.config.mtu();
    // As checked last time (no VXLAN device, the same veth, its MTU): no `ip` needed (see linkState).
    const end = linkState(OVS_VETH_BRIDGE_END);
    if (
      !linkState(VXLAN_DEV) &&
      end?.ifindex === this.checkedIfindex &&
      end.mtu === mtu &&
      linkState(OVS_VETH_OVS_END)?.mtu === mtu
    )
      return ensurePort(OVS_VETH_BRIDGE_END, 'OVS veth', [OVS_VETH_BRIDGE_END, OVS_VETH_OVS_END]);
    const fixed: string[] = [];
    if (await linkExists(VXLAN_DEV)) {
      await ip(['link', 'del', VXLAN_DEV]);
      fixed.push('removed the VXLAN device (the OVS datapath replaces it)');
    }
    if (!(await linkExists(OVS_VETH_BRIDGE_END))) {
      if (await linkExists(OVS_VETH_OVS_END)) await ip(['link', 'del', OVS_VETH_OVS_END]);
      await ip([
        'link',
        'add',
        OVS_VETH_BRIDGE_END,
        'mtu',
        String(mtu),
        'type',
        'veth',
        'peer',
        'name',
        OVS_VETH_OVS_END,
        'mtu',
        String(mtu),
      ]);
      for (const dev of [OVS_VETH_BRIDGE_END, OVS_VETH_OVS_END])
        await ethtool(['-K', dev, 'tso', 'off', 'gso', 'off', 'gro', 'off', 'tx', 'off']);
      fixed.push('created the veth pair to OVS');
    }
    const shown = (await ipJson<LinkInfo[]>(['-d', 'link', 'show', 'dev', OVS_VETH_BRIDGE_END]))[0];
    if (shown.mtu !== mtu)
      for (const dev of [OVS_VETH_BRIDGE_END, OVS_VETH_OVS_END]) await ip(['link', 'set', dev, 'mtu', String(mtu)]);
    this.checkedIfindex = linkState(OVS_VETH_BRIDGE_END)?.ifindex ?? null;
    return [...fixed, ...(await ensurePort(OVS_VETH_BRIDGE_END, 'OVS veth', [OVS_VETH_BRIDGE_END, OVS_VETH_OVS_END]))];
  }

  /** The flows: flood and remote MACs to their peers, local MACs from the tunnel, heartbeats, admitted tunnel sources. */
  program(p: Programme): Promise<{ added: number; removed: number }> {
    return this.switch.program(
      desiredFlows({
        vni: VNI,
        local: p.local,
        remote: p.remote.map((r) => ({ id: r.id, mac: r.mac, dst: r.addr })),
        floods: p.peers.map((x) => x.addr),
        heartbeats: p.heartbeats.map((peer) => ({ peer, mac: bridgeMac(peer) })),
        tunnelSources: p.tunnelSources,
      }),
    );
  }

  health(peer: PeerName): PathHealth {
    const healthy = this.heartbeats.healthy(peer);
    return { healthy, reason: healthy ? null : this.heartbeats.reason(peer) };
  }

  presumed(): Promise<string[]> {
    return this.switch.floodDestinations();
  }

  /** For reset: weft's OVS bridges (with their ports, flows and controller) and the veth pair go. */
  static async remove(ovsdb: string): Promise<string[]> {
    const bridges = await OvsSwitch.remove(ovsdb);
    if (await linkExists(OVS_VETH_BRIDGE_END)) await ip(['link', 'del', OVS_VETH_BRIDGE_END]);
    return bridges;
  }
}
