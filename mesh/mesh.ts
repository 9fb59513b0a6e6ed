// The mesh: the local peer, its connections, the topology and the gossip
// channels riding on them. Transport-agnostic: it is handed authenticated
// MeshLinks (TCP in the router, in-memory pipes in tests and benchmarks).
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from '../lib/logger.js';
import { BytesGossipData, type Gossip, type GossipData, type Gossiper } from './gossip.js';
import type { MeshLink } from './link.js';
import { decodeMessage, encodeMessage, Tag, type MeshMessage } from './messages.js';
import type { PeerName } from './peer-name.js';
import { Routes } from './routes.js';
import { Topology, type PeerEntry } from './topology.js';
import { TOPOLOGY_CHANNEL, TopologyGossiper, TopologyUpdate } from './topology-gossip.js';

export interface MeshConfig {
  name: PeerName;
  nickname: string;
  uid: string;
  port: number;
  /** At most this many connections (0: no limit); never enforced against a peer that would be cut off. */
  connLimit: number;
  /** Anti-entropy period (ms): a digest exchange with one random neighbour per channel. */
  gossipInterval: number;
  /** Updates waiting for a connection are coalesced for this long (ms). */
  gossipDelay: number;
  /** Heartbeat period (ms); a connection silent for three periods is closed. */
  heartbeatInterval: number;
  /** An unreachable peer is dropped from the topology after this long (ms). */
  gcDelay: number;
  /** Topology changes are coalesced this long (ms) before reachability is checked and listeners told. */
  routesDelay: number;
  /** Send whole states instead of deltas (Weave's method; for the benchmark baseline). */
  fullStateGossip: boolean;
  log: Logger;
}

export const defaultMeshTimings = {
  gossipInterval: 30_000,
  gossipDelay: 100,
  heartbeatInterval: 10_000,
  gcDelay: 1_000,
  routesDelay: 100,
};

/** How long a removed peer's last version is remembered (stale copies ignored meanwhile). */
const REMOVED_MEMORY_MS = 10 * 60_000;

export class MeshConnection {
  established = false;
  readonly since = Date.now();
  lastReceived = Date.now();
  bytesSent = 0;
  bytesReceived = 0;
  /** Per channel, what waits to be sent: merged, never queued, so a slow link costs bounded memory. */
  readonly pending = new Map<string, GossipData>();
  flushTimer: NodeJS.Timeout | null = null;
  closeReason: string | null = null;
  constructor(readonly link: MeshLink) {}
  get name(): PeerName {
    return this.link.remote.name;
  }
}

/** What the mesh tells its listeners, with what. */
export interface MeshEvents {
  /** A connection passed its handshake and was added (not yet confirmed by the peer). */
  'connection-added': [conn: MeshConnection];
  /** The peer confirmed the connection: it carries data now. */
  'connection-established': [conn: MeshConnection];
  'connection-removed': [conn: MeshConnection, reason: string];
  /** The topology or the routes changed (coalesced). */
  topology: [];
  /** Peers unreachable for gcDelay, dropped from the topology. */
  'peers-gone': [peers: PeerName[]];
  /** A message went out (for counting). */
  sent: [message: MeshMessage, bytes: number];
}

/** A directly connected peer, as components see it. */
export interface Neighbour {
  name: PeerName;
  nickname: string;
  uid: string;
  /** Its address as we see it (host:port of the connection). */
  addr: string;
  /** The mesh port it listens on. */
  port: number;
  established: boolean;
  outbound: boolean;
  /** Keys for the sleeve's packets to and from it, from the handshake (absent on in-memory links). */
  sleeveKeys?: { send: Buffer; receive: Buffer };
}

/**
 * The mesh as weft's components see it: read-only questions about peers and routes, gossip channels,
 * and events. The maps the mesh keeps (connections, topology, routes) are not theirs to touch.
 */
export interface MeshView {
  readonly name: PeerName;
  readonly uid: string;
  readonly log: Logger;
  registerChannel(name: string, gossiper: Gossiper): Gossip;
  on<K extends keyof MeshEvents>(event: K, listener: (...args: MeshEvents[K]) => void): this;
  /** Directly connected peers: established ones, or all with `all`. */
  neighbours(all?: boolean): Neighbour[];
  /** Whether a peer can be reached over the mesh (any connection, established or not). */
  isReachable(peer: PeerName): boolean;
  /** Peers reachable over established connections, each with the next hop towards it. */
  dataRoutes(): ReadonlyMap<PeerName, PeerName>;
  /** A peer's nickname, while it is in the topology. */
  nicknameOf(peer: PeerName): string | undefined;
  inTopology(peer: PeerName): boolean;
  /** The peers in the topology (this one included). */
  peers(): { name: PeerName; nickname: string }[];
}

export interface AddResult {
  ok: boolean;
  reason?: string;
}

interface Channel {
  name: string;
  gossiper: Gossiper;
}

export class Mesh extends EventEmitter<MeshEvents> implements MeshView {
  readonly topology = new Topology();
  private currentRoutes: Routes;
  private routesStale = false;
  readonly connections = new Map<PeerName, MeshConnection>();
  readonly channels = new Map<string, Channel>();
  readonly stats = {
    messagesSent: 0,
    bytesSent: 0,
    messagesReceived: 0,
    bytesReceived: 0,
    gossipErrors: 0,
    protocolErrors: 0,
    /** Unicasts and broadcasts refused for a source that could not have sent them this way. */
    forgedSources: 0,
  };
  /** Messages and bytes per channel (channels we do not serve count as "(other)"; control messages as "(control)"). */
  readonly channelStats = new Map<
    string,
    { messagesSent: number; bytesSent: number; messagesReceived: number; bytesReceived: number }
  >();
  private version = 0;
  private routesTimer: NodeJS.Timeout | null = null;
  private readonly unreachableSince = new Map<PeerName, number>();
  private readonly surrogateSeen = new Set<string>();
  private timers: NodeJS.Timeout[] = [];
  private gcTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  readonly log: Logger;

  constructor(readonly config: MeshConfig) {
    super();
    this.log = config.log;
    this.updateLocalEntry();
    this.currentRoutes = new Routes(this.topology, config.name);
    const topo = new TopologyGossiper(this.topology, {
      self: config.name,
      fullState: config.fullStateGossip,
      onSelfEntry: (e) => this.onSelfEntry(e),
      onChanged: () => this.scheduleRoutes(),
    });
    this.registerChannel(TOPOLOGY_CHANNEL, topo);
    this.timers.push(setInterval(() => this.antiEntropy(), jitter(config.gossipInterval)));
    this.timers.push(setInterval(() => this.heartbeat(), config.heartbeatInterval));
    this.timers.push(setInterval(() => this.surrogateSeen.clear(), config.gossipInterval));
    for (const t of this.timers) t.unref();
  }

  get name(): PeerName {
    return this.config.name;
  }

  get uid(): string {
    return this.config.uid;
  }

  neighbours(all = false): Neighbour[] {
    const out: Neighbour[] = [];
    for (const c of this.connections.values()) {
      if (!all && !c.established) continue;
      const l = c.link;
      out.push({
        name: c.name,
        nickname: l.remote.nickname,
        uid: l.remote.uid,
        addr: l.remoteAddr,
        port: l.remote.port,
        established: c.established,
        outbound: l.outbound,
        ...(l.sleeveKeys ? { sleeveKeys: l.sleeveKeys } : {}),
      });
    }
    return out;
  }

  isReachable(peer: PeerName): boolean {
    return this.routes.unicastAll.has(peer);
  }

  dataRoutes(): ReadonlyMap<PeerName, PeerName> {
    return this.routes.unicast;
  }

  nicknameOf(peer: PeerName): string | undefined {
    return this.topology.get(peer)?.nickname;
  }

  inTopology(peer: PeerName): boolean {
    return this.topology.get(peer) !== undefined;
  }

  peers(): { name: PeerName; nickname: string }[] {
    return [...this.topology.entries.values()].map((e) => ({ name: e.name, nickname: e.nickname }));
  }

  /** Routes for the current topology, recomputed only when used after a change. */
  get routes(): Routes {
    if (this.routesStale) {
      this.currentRoutes = new Routes(this.topology, this.name);
      this.routesStale = false;
    }
    return this.currentRoutes;
  }

  get ownEntry(): PeerEntry {
    return this.topology.get(this.name)!;
  }

  // ---------------------------------------------------------------- channels

  registerChannel(name: string, gossiper: Gossiper): Gossip {
    if (this.channels.has(name)) throw new Error(`gossip channel "${name}" is already registered`);
    this.channels.set(name, { name, gossiper });
    return {
      gossipUpdate: (update) => this.gossipUpdate(name, update, null),
      unicast: (dst, payload) => this.unicast(name, dst, payload),
      broadcast: (payload) => this.broadcast(name, payload),
    };
  }

  /**
   * Sends an update to every neighbour but the one it came from. Each peer passes on only what was new
   * to it, so a change crosses each connection about once. (Sending to a random subset, as mesh 0.4
   * does, left gaps that only the periodic anti-entropy filled: slower, and no cheaper, in bench/mesh-scale.)
   */
  private gossipUpdate(channel: string, update: GossipData, except: PeerName | null): void {
    const ch = this.channels.get(channel);
    let data = update;
    if (this.config.fullStateGossip && ch) data = ch.gossiper.gossip() ?? update;
    const targets = this.neighbourNames(except);
    for (const name of targets) this.enqueue(this.connections.get(name)!, channel, data);
  }

  private unicast(channel: string, dst: PeerName, payload: Uint8Array): boolean {
    if (dst === this.name) {
      queueMicrotask(() => this.deliverUnicast(channel, this.name, payload));
      return true;
    }
    return this.forwardUnicast({ tag: Tag.Unicast, channel, src: this.name, dst, payload });
  }

  private forwardUnicast(m: MeshMessage & { tag: typeof Tag.Unicast }): boolean {
    const hop = this.routes.unicastAll.get(m.dst);
    const conn = hop ? this.connections.get(hop) : undefined;
    if (!conn) return false;
    this.send(conn, m);
    return true;
  }

  private broadcast(channel: string, payload: Uint8Array): void {
    this.relayBroadcast({ tag: Tag.Broadcast, channel, src: this.name, payload }, null);
  }

  private relayBroadcast(m: MeshMessage & { tag: typeof Tag.Broadcast }, from: PeerName | null): void {
    for (const hop of this.routes.broadcast(m.src, 'all')) {
      const conn = this.connections.get(hop);
      if (conn && hop !== from) this.send(conn, m);
    }
  }

  private neighbourNames(except: PeerName | null): PeerName[] {
    return [...this.connections.keys()].filter((n) => n !== except);
  }

  private enqueue(conn: MeshConnection, channel: string, data: GossipData): void {
    const cur = conn.pending.get(channel);
    conn.pending.set(channel, cur ? cur.merge(data) : data);
    if (!conn.flushTimer) {
      conn.flushTimer = setTimeout(() => this.flush(conn), this.config.gossipDelay);
      conn.flushTimer.unref();
    }
  }

  /** Sends every update waiting for its connection's gossip delay now (a peer about to leave the mesh). */
  flushNow(): void {
    for (const conn of this.connections.values()) {
      if (!conn.flushTimer) continue;
      clearTimeout(conn.flushTimer);
      try {
        this.flush(conn);
      } catch (err) {
        conn.pending.clear();
        this.log.warn({ peer: conn.name, err: (err as Error).message }, 'gossip could not be sent');
      }
    }
  }

  private flush(conn: MeshConnection): void {
    conn.flushTimer = null;
    if (this.connections.get(conn.name) !== conn) return;
    for (const [channel, data] of conn.pending) {
      this.send(conn, { tag: Tag.Gossip, channel, src: this.name, payload: data.encode() });
    }
    conn.pending.clear();
  }

  private channelStatsOf(m: MeshMessage): {
    messagesSent: number;
    bytesSent: number;
    messagesReceived: number;
    bytesReceived: number;
  } {
    // Label values stay bounded: a remote peer cannot invent channels in our statistics.
    const name = 'channel' in m ? (this.channels.has(m.channel) ? m.channel : '(other)') : '(control)';
    let s = this.channelStats.get(name);
    if (!s) this.channelStats.set(name, (s = { messagesSent: 0, bytesSent: 0, messagesReceived: 0, bytesReceived: 0 }));
    return s;
  }

  private send(conn: MeshConnection, m: MeshMessage): void {
    const bytes = encodeMessage(m);
    conn.bytesSent += bytes.length;
    this.stats.messagesSent++;
    this.stats.bytesSent += bytes.length;
    const cs = this.channelStatsOf(m);
    cs.messagesSent++;
    cs.bytesSent += bytes.length;
    this.emit('sent', m, bytes.length);
    conn.link.send(bytes);
  }

  // ------------------------------------------------------------- connections

  /** Offers a connection whose handshake succeeded; refused ones are closed with the reason. */
  addConnection(link: MeshLink): AddResult {
    const remote = link.remote;
    if (this.stopped) return this.refuse(link, 'router is shutting down');
    if (remote.name === this.name)
      return this.refuse(
        link,
        remote.uid === this.config.uid
          ? 'connected to ourself'
          : `peer name collision: another peer is also called ${remote.name}`,
      );
    const existing = this.connections.get(remote.name);
    if (existing) {
      if (existing.link.remote.uid !== remote.uid) {
        this.closeConnection(existing, 'peer restarted; replaced by its new connection');
      } else if (link.connUid < existing.link.connUid) {
        this.closeConnection(existing, 'duplicate connection; keeping the other one');
      } else if (link.connUid === existing.link.connUid) {
        this.closeConnection(existing, 'duplicate connection with an identical id; dropping both');
        return this.refuse(link, 'duplicate connection with an identical id; dropping both');
      } else {
        return this.refuse(link, 'duplicate connection; keeping the other one');
      }
    }
    const limit = this.config.connLimit;
    if (limit > 0 && !link.direct && this.connections.size >= limit && this.routes.unicastAll.has(remote.name)) {
      return this.refuse(link, `connection limit (${limit}) reached, and the peer is reachable through others`);
    }
    const conn = new MeshConnection(link);
    this.connections.set(remote.name, conn);
    link.onMessage = (bytes) => this.receive(conn, bytes);
    link.onClose = (reason) => this.connectionClosed(conn, reason);
    this.log.info(
      { peer: remote.name, nickname: remote.nickname, addr: link.remoteAddr, outbound: link.outbound },
      'connection added',
    );
    this.send(conn, { tag: Tag.Ready });
    this.updateLocalEntry();
    this.scheduleRoutes();
    // Compare digests with the new neighbour so each side sends only what the other lacks.
    for (const ch of this.channels.values()) this.sendDigestOrState(conn, ch, false);
    this.emit('connection-added', conn);
    return { ok: true };
  }

  private refuse(link: MeshLink, reason: string): AddResult {
    this.log.info({ peer: link.remote.name, addr: link.remoteAddr, reason }, 'connection refused');
    link.close(reason);
    return { ok: false, reason };
  }

  private closeConnection(conn: MeshConnection, reason: string): void {
    conn.link.close(reason);
    this.connectionClosed(conn, reason);
  }

  private connectionClosed(conn: MeshConnection, reason: string): void {
    if (conn.flushTimer) clearTimeout(conn.flushTimer);
    conn.flushTimer = null;
    conn.closeReason ??= reason;
    if (this.connections.get(conn.name) !== conn) return;
    this.connections.delete(conn.name);
    this.log.info({ peer: conn.name, addr: conn.link.remoteAddr, reason }, 'connection closed');
    if (!this.stopped) {
      this.updateLocalEntry();
      this.scheduleRoutes();
    }
    this.emit('connection-removed', conn, reason);
  }

  // ---------------------------------------------------------------- receive

  private receive(conn: MeshConnection, bytes: Uint8Array): void {
    if (this.connections.get(conn.name) !== conn) return;
    conn.lastReceived = Date.now();
    conn.bytesReceived += bytes.length;
    this.stats.messagesReceived++;
    this.stats.bytesReceived += bytes.length;
    let m: MeshMessage;
    try {
      m = decodeMessage(bytes);
    } catch (err) {
      this.stats.protocolErrors++;
      this.closeConnection(conn, `protocol error from peer: ${(err as Error).message}`);
      return;
    }
    const cs = this.channelStatsOf(m);
    cs.messagesReceived++;
    cs.bytesReceived += bytes.length;
    switch (m.tag) {
      case Tag.Heartbeat:
      case Tag.Unknown:
        return;
      case Tag.Ready:
        if (!conn.established) {
          conn.established = true;
          this.updateLocalEntry();
          this.scheduleRoutes();
          this.emit('connection-established', conn);
        }
        return;
      case Tag.Close:
        conn.closeReason = `closed by peer: ${m.reason}`;
        return;
      case Tag.Gossip:
        return this.receiveGossip(conn, m.channel, m.payload);
      case Tag.Unicast:
        if (!this.plausibleSource(conn, m.src, m.channel)) return;
        if (m.dst === this.name) this.deliverUnicast(m.channel, m.src, m.payload);
        else if (!this.forwardUnicast(m))
          this.log.debug({ dst: m.dst, channel: m.channel }, 'no route for unicast; dropped');
        return;
      case Tag.Broadcast: {
        if (!this.plausibleSource(conn, m.src, m.channel)) return;
        const ch = this.channels.get(m.channel);
        if (ch?.gossiper.onBroadcast && m.src !== this.name)
          this.guard(m.channel, () => ch.gossiper.onBroadcast!(m.src, m.payload));
        this.relayBroadcast(m, conn.name);
        return;
      }
      case Tag.Digest: {
        const ch = this.channels.get(m.channel);
        if (!ch?.gossiper.compareDigest) return;
        const res = this.guard(m.channel, () => ch.gossiper.compareDigest!(m.digest));
        if (!res) return;
        if (res.update) this.enqueue(conn, m.channel, res.update);
        if (res.remoteHasMore && !m.reply) this.sendDigestOrState(conn, ch, true);
        return;
      }
    }
  }

  private receiveGossip(conn: MeshConnection, channel: string, payload: Uint8Array): void {
    const ch = this.channels.get(channel);
    if (!ch) {
      // A channel we do not run (say DNS is off here): relay it anyway, once per payload.
      const key = createHash('sha1').update(channel).update(payload).digest('base64');
      if (this.surrogateSeen.has(key)) return;
      this.surrogateSeen.add(key);
      this.gossipUpdate(channel, new BytesGossipData(payload), conn.name);
      return;
    }
    const delta = this.guard(channel, () => ch.gossiper.onGossip(payload, conn.name));
    if (delta) this.gossipUpdate(channel, delta, conn.name);
  }

  /**
   * Whether a unicast or broadcast from `src` could have come over `conn`. A message names its source,
   * and any peer that passed the handshake could name another; this refuses what can be checked
   * without signatures: our own name, and a directly connected peer's name on another connection
   * (its routes to us, and its broadcast trees, take the direct connection, since every peer
   * computes shortest paths). A source further away is taken on the relaying peer's word.
   */
  private plausibleSource(conn: MeshConnection, src: PeerName, channel: string): boolean {
    if (src === conn.name) return true;
    if (src !== this.name && !this.connections.get(src)?.established) return true;
    this.stats.forgedSources++;
    this.log.debug(
      { src, via: conn.name, channel },
      'message naming a source that could not have sent it this way; dropped',
    );
    return false;
  }

  private deliverUnicast(channel: string, src: PeerName, payload: Uint8Array): void {
    const ch = this.channels.get(channel);
    if (ch?.gossiper.onUnicast) this.guard(channel, () => ch.gossiper.onUnicast!(src, payload));
  }

  /** Runs a channel handler; its errors are logged and counted, never fatal to the router or the connection. */
  private guard<T>(channel: string, fn: () => T): T | null {
    try {
      return fn();
    } catch (err) {
      this.stats.gossipErrors++;
      this.log.warn({ channel, err: (err as Error).message }, 'gossip rejected');
      return null;
    }
  }

  private sendDigestOrState(conn: MeshConnection, ch: Channel, reply: boolean): void {
    if (ch.gossiper.digest && !this.config.fullStateGossip) {
      this.send(conn, { tag: Tag.Digest, channel: ch.name, reply, digest: ch.gossiper.digest() });
    } else {
      const state = ch.gossiper.gossip();
      if (state) this.enqueue(conn, ch.name, state);
    }
  }

  // ---------------------------------------------------------------- topology

  private updateLocalEntry(): void {
    this.version++;
    const connections = [...this.connections.values()].map((c) => ({
      peer: c.name,
      addr: c.link.remoteAddr,
      outbound: c.link.outbound,
      established: c.established,
    }));
    const entry: PeerEntry = {
      name: this.config.name,
      nickname: this.config.nickname,
      uid: this.config.uid,
      version: this.version,
      port: this.config.port,
      connections,
    };
    this.topology.setLocal(entry);
    if (this.channels.has(TOPOLOGY_CHANNEL)) this.gossipUpdate(TOPOLOGY_CHANNEL, new TopologyUpdate([entry]), null);
  }

  /** Someone holds an entry about us from an earlier incarnation: supersede it. */
  private onSelfEntry(e: PeerEntry): void {
    if (e.uid === this.config.uid && e.version <= this.version) return;
    if (e.version >= this.version) {
      this.version = e.version;
      this.updateLocalEntry();
    }
  }

  private scheduleRoutes(): void {
    this.routesStale = true;
    if (this.routesTimer || this.stopped) return;
    this.routesTimer = setTimeout(() => {
      this.routesTimer = null;
      this.recalculate();
    }, this.config.routesDelay);
    this.routesTimer.unref();
  }

  /** Recomputes routes and drops peers that stayed unreachable for gcDelay. */
  recalculate(): void {
    if (this.stopped) return;
    const now = Date.now();
    const reachable = this.topology.reachableFrom(this.name);
    for (const name of this.topology.entries.keys()) {
      if (reachable.has(name)) this.unreachableSince.delete(name);
      else if (!this.unreachableSince.has(name)) this.unreachableSince.set(name, now);
    }
    const gone: PeerName[] = [];
    for (const [name, since] of this.unreachableSince) {
      if (reachable.has(name) || !this.topology.get(name)) {
        this.unreachableSince.delete(name);
      } else if (now - since >= this.config.gcDelay) {
        this.topology.remove(name, now);
        this.unreachableSince.delete(name);
        gone.push(name);
      }
    }
    this.topology.expireRemoved(REMOVED_MEMORY_MS, now);
    this.routesStale = true;
    if (this.unreachableSince.size > 0 && !this.gcTimer) {
      this.gcTimer = setTimeout(() => {
        this.gcTimer = null;
        this.recalculate();
      }, this.config.gcDelay);
      this.gcTimer.unref();
    }
    if (gone.length > 0) {
      this.log.info({ peers: gone }, 'peers unreachable; removed from topology');
      this.emit('peers-gone', gone);
    }
    this.emit('topology');
  }

  // ---------------------------------------------------------------- timers

  private antiEntropy(): void {
    const names = [...this.connections.keys()];
    if (names.length === 0) return;
    for (const ch of this.channels.values()) {
      const conn = this.connections.get(names[Math.floor(Math.random() * names.length)])!;
      this.sendDigestOrState(conn, ch, false);
    }
  }

  private heartbeat(): void {
    const deadline = Date.now() - 3 * this.config.heartbeatInterval;
    for (const conn of [...this.connections.values()]) {
      if (conn.lastReceived < deadline) {
        this.closeConnection(conn, `no message from peer for ${Math.round((Date.now() - conn.lastReceived) / 1000)}s`);
      } else {
        this.send(conn, { tag: Tag.Heartbeat });
      }
    }
  }

  /** Closes every connection and stops the timers. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    if (this.gcTimer) clearTimeout(this.gcTimer);
    if (this.routesTimer) clearTimeout(this.routesTimer);
    for (const conn of [...this.connections.values()]) this.closeConnection(conn, 'router is shutting down');
  }
}

function jitter(ms: number): number {
  return Math.max(1, Math.round(ms * (0.8 + Math.random() * 0.4)));
}
