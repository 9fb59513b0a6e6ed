// The seam between the datapath and the ways it carries frames to other hosts.
// Every backend is a port of the `weft` Linux bridge (where containers, the DNS
// address and the host are): frames for remote MACs it carries are sent to that
// port (the datapath programs those bridge entries, for all backends at once, so a
// MAC moving between backends is never on two ports), and the backend gets them to
// the right peer. Three backends: the kernel's VXLAN device (datapath/vxlan/), an
// Open vSwitch bridge weft controls (datapath/ovs/), both "fastdp", and the sleeve
// in userspace (datapath/sleeve/). Which peer uses which is datapath/overlay.ts's
// choice.
import type { PeerName } from '../mesh/index.js';

/** What a backend is to carry: its peers (with their underlay addresses) and the containers there. */
export interface Programme {
  /** Peers whose traffic this backend carries, with the underlay address to send to ('' where only relays reach them: the sleeve). */
  peers: { name: PeerName; addr: string }[];
  /** Remote containers at those peers. */
  remote: { id: string; mac: string; peer: PeerName; addr: string }[];
  /** This host's containers (and its bridge MAC, id "bridge"). */
  local: { id: string; mac: string }[];
  /** Directly connected peers whose VXLAN heartbeats are counted here. */
  heartbeats: PeerName[];
  /** Underlay addresses whose tunnel traffic is taken (datapath/firewall.ts's VXLAN set). */
  tunnelSources: string[];
}

export interface PathHealth {
  healthy: boolean;
  /** Why not, when not. */
  reason: string | null;
}

export interface Backend {
  /** What status calls it. */
  readonly kind: 'vxlan' | 'ovs' | 'sleeve';
  /** Its port on the weft bridge: remote MACs it carries are sent there. */
  readonly port: string;
  /** Makes its devices and starts; throws with the reason when it cannot. */
  start(): Promise<void>;
  /** Stops programming (what is programmed stays: the kernel keeps carrying traffic). */
  stop(): void;
  /** Makes its bridge port right again (after the bridge was changed underneath); what it had to fix. */
  plumb(): Promise<string[]>;
  /** Brings its own tables (VXLAN fdb, OpenFlow flows, sleeve routes) to exactly this. */
  program(p: Programme): Promise<{ added: number; removed: number }>;
  /** Whether the path to a directly connected peer works, and why not. */
  health(peer: PeerName): PathHealth;
  /** The underlay addresses it was sending to when it started (after a router restart: presumed to work). */
  presumed(): Promise<string[]>;
}
