// What the router and its clients (the CLI, the CNI plugin, scripts) agree on:
// where a running router says it is (router.json), and the shapes of its report
// and status. It loads nothing at run time (types are erased), so a client that
// imports it stays light; the status text is rendered by router/render.ts.
import { join } from 'node:path';
import type { PeerName } from '../mesh/peer-name.js';
import type { IpamStatus } from '../ipam/allocator.js';
import type { DockerStatus } from '../plugin/docker-watcher.js';
import type { ServiceEngine } from '../services/engine.js';
import type { KernelCheckStatus } from '../datapath/kernel-check.js';

/** Where a router keeps its state and the CLI looks for it (--data-dir, WEFT_DATA_DIR). */
export const DEFAULT_DATA_DIR = '/var/lib/weft';

export type { PolicyStatus } from '../policy/engine.js';
export type { ServiceDetail } from './api/services.js';

/** What the CLI reads to find a running router: written when ready, removed at exit. */
export interface RouterInfo {
  pid: number;
  httpAddr: string;
  name: string;
  nickname: string;
  version: string;
  startedAt: string;
  /** When weft launch runs the router as a Docker container: the container's name. */
  container?: string;
}

/** The file in its data dir where a running router says where it is. */
export const ROUTER_INFO_FILE = 'router.json';

export function routerInfoPath(dataDir: string): string {
  return join(dataDir, ROUTER_INFO_FILE);
}

export interface ConnectionReport {
  address: string;
  outbound: boolean;
  /** The data path to this peer: fastdp (ovs on the OVS datapath) when its VXLAN heartbeats are acknowledged, else the sleeve. */
  overlay?: 'fastdp' | 'ovs' | 'sleeve' | 'none';
  mtu?: number;
  /** Why this connection is not on fastdp (when it is not). */
  fallbackReason?: string;
  /** The sleeve's path MTU to this peer (IP packet size), from probes. */
  pmtu?: number;
  state: 'established' | 'pending' | 'connecting' | 'retrying' | 'failed' | 'waiting';
  peer?: PeerName;
  nickname?: string;
  info: string;
}

export interface Report {
  version: string;
  protocol: { min: number; max: number };
  name: PeerName;
  nickname: string;
  uid: string;
  port: number;
  encryption: 'password' | 'no password';
  discovery: boolean;
  connLimit: number;
  peers: {
    name: PeerName;
    nickname: string;
    uid: string;
    version: number;
    connections: {
      name: PeerName;
      nickname: string | null;
      address: string;
      outbound: boolean;
      established: boolean;
    }[];
  }[];
  unicastRoutes: { dest: PeerName; via: PeerName }[];
  broadcastRoutes: { source: PeerName; via: PeerName[] }[];
  connections: ConnectionReport[];
  targets: { address: string; direct: boolean; state: string; peer?: PeerName; error?: string; retryInMs?: number }[];
  gossip: {
    messagesSent: number;
    bytesSent: number;
    messagesReceived: number;
    bytesReceived: number;
    gossipErrors: number;
    protocolErrors: number;
    /** Unicasts and broadcasts refused for naming a source that could not have sent them that way (absent before). */
    forgedSources?: number;
  };
  ipam: IpamStatus;
  /** The IPv6 allocator (absent from routers before it). */
  ipam6?: IpamStatus;
  dns: {
    domain: string;
    address: string | null;
    upstreams: string[];
    entries: { hostname: string; container: string; ip: string; origin: PeerName }[];
    stats: {
      queries: number;
      local: number;
      nxdomain: number;
      forwarded: number;
      servfail: number;
      formerr: number;
    } | null;
  };
  datapath: null | {
    kind: 'fastdp' | 'ovs';
    mtu: number;
    /** The OVS datapath's bridge, when it is the one. */
    ovs?: {
      bridge: string;
      datapathType: string;
      ovsdb: string;
      connected: boolean;
      datapathId: string;
      flowsAdded: number;
      flowsRemoved: number;
      reconnects: number;
      lastError: string | null;
    };
    localEndpoints: { container: string; mac: string; cidrs: string[]; cidrs6?: string[]; groups?: string[] }[];
    /** The host's addresses on the overlay (weft expose), both families. */
    exposed: string[];
    endpoints: { container: string; mac: string; cidrs: string[]; cidrs6?: string[]; peer: PeerName }[];
    stats: { fdbAdded: number; fdbRemoved: number; repairs: number; errors: number };
    /**
     * The check of the bridge and the firewall: whether it runs on the kernel's change notifications
     * (else every 5 s, and why not), how many checks ran and notifications came.
     */
    checks?: KernelCheckStatus;
    lastError: string | null;
    /** Whether the kernel VXLAN path may be used (--no-fastdp turns it off). */
    fastdp: boolean;
    /** Containers get IPv6 addresses too, and the overlay carries IPv6 (--ipv6). */
    ipv6?: boolean;
    /** The userspace sleeve: running with its counters, or why not. */
    sleeve: { running: boolean; error: string | null; [counter: string]: unknown };
  };
  /** The Docker engine weft follows and the network plugin it serves (null: Docker support off). */
  docker: (DockerStatus & { pluginCalls: Record<string, number> }) | null;
  /** Security groups: rules in the mesh, containers here that some rule limits. */
  policy: { rules: number; limitedHere: number; lastError: string | null; notEnforced: string[] } | null;
  /** State files that could not be written (a full disk): what changed is in force, but would be lost at a restart. */
  state: { path: string; error: string; since: number; count: number }[];
  /** Services: how many, how many serve their VIP, local containers whose namespace translates them. */
  services: ({ range: string } & ReturnType<ServiceEngine['summary']>) | null;
}
