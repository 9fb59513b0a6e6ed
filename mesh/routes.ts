// Routes computed locally from the topology. Every peer runs the same
// breadth-first search with each level sorted by name, so all peers that hold
// the same topology derive the same broadcast trees (Weave's rule).
import type { PeerName } from './peer-name.js';
import type { Topology } from './topology.js';

export type RouteMode = 'established' | 'all';

export class Routes {
  /** Next hop per destination over established, symmetric connections: what data may use. */
  readonly unicast: Map<PeerName, PeerName>;
  /** Next hop per destination over every reported connection: what gossip uses. */
  readonly unicastAll: Map<PeerName, PeerName>;
  private readonly broadcastCache = new Map<string, PeerName[]>();

  constructor(
    private readonly topology: Topology,
    readonly self: PeerName,
  ) {
    this.unicast = this.bfs(self, null, 'established').routes;
    this.unicastAll = this.bfs(self, null, 'all').routes;
    this.unicast.delete(self);
    this.unicastAll.delete(self);
  }

  /** Our neighbours to forward a broadcast from `src` to. */
  broadcast(src: PeerName, mode: RouteMode = 'established'): PeerName[] {
    const key = `${mode}/${src}`;
    let hops = this.broadcastCache.get(key);
    if (!hops) {
      hops = [];
      if (this.topology.get(src) || src === this.self) {
        const { found, routes } = this.bfs(src, this.self, mode);
        if (found) hops = this.neighbours(this.self, mode, routes);
      }
      this.broadcastCache.set(key, hops);
    }
    return hops;
  }

  /** Peers connected to `name` (per mode), in name order, skipping those in `exclude`. */
  neighbours(name: PeerName, mode: RouteMode, exclude?: Map<PeerName, unknown>): PeerName[] {
    const entry = this.topology.get(name);
    if (!entry) return [];
    const out: PeerName[] = [];
    for (const c of entry.connections) {
      if (exclude?.has(c.peer)) continue;
      if (mode === 'established') {
        if (!c.established) continue;
        const back = this.topology.get(c.peer)?.connections.find((r) => r.peer === name);
        if (!back || !back.established) continue;
      }
      out.push(c.peer);
    }
    return out.sort();
  }

  private bfs(
    start: PeerName,
    stopAt: PeerName | null,
    mode: RouteMode,
  ): { found: boolean; routes: Map<PeerName, PeerName> } {
    const routes = new Map<PeerName, PeerName>([[start, '']]);
    let next = [start];
    while (next.length > 0) {
      const level = next.sort();
      next = [];
      for (const cur of level) {
        if (cur === stopAt) return { found: true, routes };
        for (const remote of this.neighbours(cur, mode, routes)) {
          next.push(remote);
          routes.set(remote, cur === start ? remote : routes.get(cur)!);
        }
      }
    }
    return { found: false, routes };
  }
}
