// The endpoint table: which container MACs and addresses live at which peer.
// Each peer owns one record (its attached endpoints, with a version) and only
// it changes that record; records merge by (version, content), like topology
// entries. Records of peers that left the topology are dropped.
import type { Gossip, GossipData, Gossiper } from '../router/mesh/gossip.js';
import type { Mesh } from '../router/mesh/mesh.js';
import { pack, unpack } from '../router/mesh/messages.js';
import { isPeerName, type PeerName } from '../router/mesh/peer-name.js';

export const ENDPOINTS_CHANNEL = 'endpoints';

export interface Endpoint {
  container: string;
  mac: string;
  /** "ip/prefix" */
  cidrs: string[];
}

export interface PeerEndpoints {
  peer: PeerName;
  version: number;
  endpoints: Endpoint[];
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function key(r: PeerEndpoints): string {
  return JSON.stringify(r.endpoints.map((e) => [e.container, e.mac, [...e.cidrs].sort()]).sort());
}

function newer(a: PeerEndpoints, b: PeerEndpoints): boolean {
  if (a.version !== b.version) return a.version > b.version;
  return key(a) > key(b);
}

class EndpointsUpdate implements GossipData {
  constructor(readonly records: PeerEndpoints[]) {}
  encode(): Uint8Array {
    return pack(this.records.map((r) => [r.peer, r.version, r.endpoints.map((e) => [e.container, e.mac, e.cidrs])]));
  }
  merge(other: GossipData): GossipData {
    const m = new Map(this.records.map((r) => [r.peer, r]));
    for (const r of (other as EndpointsUpdate).records) {
      const cur = m.get(r.peer);
      if (!cur || newer(r, cur)) m.set(r.peer, r);
    }
    return new EndpointsUpdate([...m.values()]);
  }
}

function decode(bytes: Uint8Array): PeerEndpoints[] {
  const v = unpack(bytes);
  if (!Array.isArray(v) || v.length > 100_000) throw new Error('endpoint update is not a list');
  return v.map((w) => {
    if (!Array.isArray(w) || w.length !== 3) throw new Error('endpoint record is malformed');
    const [peer, version, eps] = w as unknown[];
    if (!isPeerName(peer) || !Number.isSafeInteger(version) || (version as number) < 0 || !Array.isArray(eps) || eps.length > 100_000) {
      throw new Error('endpoint record is malformed');
    }
    const endpoints = eps.map((e) => {
      if (!Array.isArray(e) || e.length !== 3) throw new Error('endpoint is malformed');
      const [container, mac, cidrs] = e as unknown[];
      if (typeof container !== 'string' || container.length > 256 || typeof mac !== 'string' || !MAC.test(mac) || !Array.isArray(cidrs) || cidrs.length > 64) {
        throw new Error('endpoint is malformed');
      }
      if (!cidrs.every((c) => typeof c === 'string' && /^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(c))) throw new Error('endpoint address is malformed');
      return { container, mac, cidrs: cidrs as string[] };
    });
    return { peer, version: version as number, endpoints };
  });
}

export class EndpointTable implements Gossiper {
  readonly records = new Map<PeerName, PeerEndpoints>();
  private readonly channel: Gossip;
  private version = 0;
  private readonly listeners: (() => void)[] = [];
  /** Peers that left the topology: their records stay this long, so the kernel keeps forwarding through a router restart. */
  private readonly goneAt = new Map<PeerName, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly mesh: Mesh,
    private readonly graceMs = 60_000,
  ) {
    this.channel = mesh.registerChannel(ENDPOINTS_CHANNEL, this);
    this.records.set(mesh.name, { peer: mesh.name, version: 0, endpoints: [] });
    mesh.on('peers-gone', (gone: PeerName[]) => {
      for (const p of gone) if (this.records.has(p)) this.goneAt.set(p, Date.now());
    });
    this.timer = setInterval(() => this.expire(), Math.min(5000, graceMs));
    this.timer.unref();
  }

  private expire(): void {
    const now = Date.now();
    let changed = false;
    for (const [p, at] of this.goneAt) {
      if (this.mesh.topology.get(p)) {
        this.goneAt.delete(p); // it came back
      } else if (now - at >= this.graceMs) {
        this.goneAt.delete(p);
        changed = this.records.delete(p) || changed;
      }
    }
    if (changed) this.changed();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  get local(): Endpoint[] {
    return this.records.get(this.mesh.name)!.endpoints;
  }

  /** Replaces this peer's endpoints and announces them. */
  setLocal(endpoints: Endpoint[]): void {
    // Start above any version of ours others may still hold from before a restart.
    this.version = Math.max(this.version, this.records.get(this.mesh.name)?.version ?? 0) + 1;
    const rec = { peer: this.mesh.name, version: this.version, endpoints };
    this.records.set(this.mesh.name, rec);
    this.channel.gossipUpdate(new EndpointsUpdate([rec]));
    this.changed();
  }

  gossip(): GossipData | null {
    return new EndpointsUpdate([...this.records.values()]);
  }

  onGossip(update: Uint8Array): GossipData | null {
    const improved: PeerEndpoints[] = [];
    for (const r of decode(update)) {
      if (r.peer === this.mesh.name) {
        // An older incarnation's record: supersede it with ours.
        if (r.version >= this.version) {
          this.version = r.version;
          this.setLocal(this.local);
        }
        continue;
      }
      const cur = this.records.get(r.peer);
      if (!cur || newer(r, cur)) {
        this.goneAt.delete(r.peer);
        this.records.set(r.peer, r);
        improved.push(r);
      }
    }
    if (improved.length === 0) return null;
    this.changed();
    return new EndpointsUpdate(improved);
  }

  /** Every endpoint with the peer it lives at. */
  all(): (Endpoint & { peer: PeerName })[] {
    return [...this.records.values()].flatMap((r) => r.endpoints.map((e) => ({ ...e, peer: r.peer })));
  }
}
