// The sleeve: Ethernet frames carried in userspace over UDP, for peers the
// kernel VXLAN path cannot serve (blocked port, no direct connection, or
// encryption wanted). A TAP port on the bridge hands us frames the bridge sends
// towards sleeve peers; we put them in messages addressed peer to peer, relayed
// hop by hop along the mesh's unicast routes, sealed per hop when encryption is
// on, fragmented to the path MTU that probes found. Frames that arrive for us
// go into the TAP, and the bridge delivers them to local containers.
//
// The TAP and the VXLAN port are both "isolated" bridge ports: a frame that came
// in over one overlay never leaves over the other, so nothing loops.
import type { Gossip, GossipData, Gossiper } from '../router/mesh/gossip.js';
import type { Mesh } from '../router/mesh/mesh.js';
import { hostOf } from '../router/mesh/connection-maker.js';
import { pack, unpack } from '../router/mesh/messages.js';
import { peerNameFromBytes, peerNameToBytes, type PeerName } from '../router/mesh/peer-name.js';
import { BRIDGE } from './bridge.js';
import { bridge, ipBatch } from './iproute.js';
import { TapPort, UdpPort } from './native/index.js';
import { parseIp } from '../ipam/addr.js';
import {
  FRAGMENT_HEADER,
  HEADER,
  HOPS_OFFSET,
  IP_UDP,
  KIND_FRAGMENT,
  KIND_FRAMES,
  KIND_PROBE,
  MESSAGE_HEADER,
  PMTU_FLOOR,
  PacketOpener,
  PacketSealer,
  Reassembler,
  SEAL_OVERHEAD,
  decodeMessage,
  encodeMessage,
  readHeader,
  writeHeader,
} from './sleeve-packet.js';

export const SLEEVE_TAP = 'weft-sleeve';
const CHANNEL = 'sleeve';
const VNET_HDR = 10;
const PROBE_INTERVAL_MS = 1000;
/** A hop is healthy while its probes were acknowledged this recently. */
const HEALTHY_MS = 3 * PROBE_INTERVAL_MS + 500;
/** Remote MACs learnt from sleeve traffic, at most (the oldest go first). */
const MAX_LEARNED = 16_384;
/** The largest UDP payload over IPv4. */
const MAX_UDP_PAYLOAD = 65507;

/** A directly connected peer, as the sleeve sees it. */
interface Hop {
  name: PeerName;
  addr: number;
  host: string;
  port: number;
  sealer: PacketSealer | null;
  opener: PacketOpener | null;
  /** Largest probe size (IP packet) the peer acknowledged: the path MTU we use (never below the floor). */
  pmtu: number;
  /** Smallest probe size that went unacknowledged: the search for the path MTU stays below it. */
  failedAt: number;
  /** Probes of the current round not yet acknowledged. */
  pending: Set<number>;
  probeAckAt: number;
}

export interface SleeveConfig {
  port: number;
  /** The overlay MTU (the TAP's). */
  mtu: () => number;
  /** The underlay interface MTU: the largest probe. */
  underlayMtu: number;
  /** Whether packets to and from this peer (at this underlay address) are sealed. */
  encrypt: (peer: PeerName, host: string) => boolean;
  /** Who has this MAC (from the endpoint table), if anyone. */
  macOwner: (mac: string) => PeerName | undefined;
}

export interface SleeveHopStatus {
  pmtu: number;
  healthy: boolean;
  encrypted: boolean;
  reason: string | null;
}

function macText(b: Buffer, o: number): string {
  return b.toString('hex', o, o + 6).replace(/(..)(?!$)/g, '$1:');
}

export class Sleeve implements Gossiper {
  private udp: UdpPort | null = null;
  private probes: UdpPort | null = null;
  private tap: TapPort | null = null;
  private readonly channel: Gossip;
  private readonly hops = new Map<PeerName, Hop>();
  private readonly hopByBytes = new Map<string, Hop>();
  /** Remote MACs seen in frames from each peer (for MACs the endpoint table does not know). */
  private readonly learned = new Map<string, PeerName>();
  private readonly reassembler = new Reassembler();
  private readonly self: Buffer;
  private timer: NodeJS.Timeout | null = null;
  private fragmentId = 0;
  /** Peers whose traffic goes by sleeve (the datapath decides). */
  destinations = new Set<PeerName>();
  readonly stats = { framesOut: 0, framesIn: 0, bytesOut: 0, bytesIn: 0, relayed: 0, dropped: 0, refused: 0, malformed: 0 };
  lastError: string | null = null;

  constructor(
    private readonly mesh: Mesh,
    private readonly config: SleeveConfig,
  ) {
    this.self = peerNameToBytes(mesh.name);
    this.channel = mesh.registerChannel(CHANNEL, this);
  }

  /** Opens the TAP (on the bridge) and the UDP port. Throws with the reason when it cannot. */
  async start(): Promise<void> {
    const slotSize = 65536 + 64;
    this.udp = new UdpPort({ port: this.config.port, slots: 64, slotSize, rcvbuf: 8 << 20, sndbuf: 8 << 20 }, (n) => this.guard(() => this.onDatagrams(n)));
    this.probes = new UdpPort({ port: 0, dontFragment: true, slots: 16, slotSize: 9216 }, () => undefined);
    this.tap = new TapPort({ name: SLEEVE_TAP, vnetHdr: true, slots: 32 }, (n) => this.guard(() => this.onFrames(n)));
    await this.plumb();
    this.timer = setInterval(() => this.guard(() => this.probe()), PROBE_INTERVAL_MS);
    this.timer.unref();
    this.mesh.on('connection-established', () => this.syncHops());
    this.mesh.on('connection-removed', () => this.syncHops());
    this.syncHops();
  }

  /** The TAP as an isolated, non-learning, ARP-suppressing port of the bridge. Also used to repair. */
  async plumb(): Promise<void> {
    // Super-frames a little under 64 KB fit one datagram with our headers.
    await ipBatch([`link set ${SLEEVE_TAP} mtu ${this.config.mtu()} gso_max_size 65000 master ${BRIDGE} up`]);
    await bridge(['link', 'set', 'dev', SLEEVE_TAP, 'learning', 'off', 'neigh_suppress', 'on', 'isolated', 'on']);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    // Closing the TAP's descriptor removes the interface.
    this.tap?.close();
    this.udp?.close();
    this.probes?.close();
    this.tap = this.udp = this.probes = null;
  }

  /** Errors in packet handling are counted, never thrown into the event loop. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.stats.dropped++;
      this.lastError = (err as Error).message;
    }
  }

  /** Hops follow the mesh's established connections; keys come from each connection's handshake. */
  syncHops(): void {
    const seen = new Set<PeerName>();
    for (const c of this.mesh.connections.values()) {
      if (!c.established) continue;
      seen.add(c.name);
      const host = hostOf(c.link.remoteAddr);
      const old = this.hops.get(c.name);
      const keys = c.link.sleeveKeys;
      const encrypted = !!keys && this.config.encrypt(c.name, host);
      if (old && old.host === host && old.port === c.link.remote.port && !!old.sealer === encrypted) continue;
      if (!/^\d+\.\d+\.\d+\.\d+$/.test(host)) continue; // IPv4 underlay only
      const hop: Hop = {
        name: c.name,
        addr: parseIp(host),
        host,
        port: c.link.remote.port,
        sealer: encrypted ? new PacketSealer(keys.send) : null,
        opener: encrypted ? new PacketOpener(keys.receive) : null,
        pmtu: old?.pmtu ?? PMTU_FLOOR,
        failedAt: old?.failedAt ?? this.config.underlayMtu + 1,
        pending: new Set(),
        probeAckAt: old?.probeAckAt ?? 0,
      };
      this.hops.set(c.name, hop);
      this.hopByBytes.set(peerNameToBytes(c.name).toString('hex'), hop);
    }
    for (const [name] of this.hops) {
      if (seen.has(name)) continue;
      this.hops.delete(name);
      this.hopByBytes.delete(peerNameToBytes(name).toString('hex'));
    }
    for (const [mac, p] of this.learned) if (!this.mesh.topology.get(p)) this.learned.delete(mac);
  }

  /** Status of the sleeve to a direct peer. */
  hopStatus(peer: PeerName): SleeveHopStatus | null {
    const h = this.hops.get(peer);
    if (!h) return null;
    const healthy = Date.now() - h.probeAckAt < HEALTHY_MS;
    return {
      pmtu: h.pmtu,
      healthy,
      encrypted: !!h.sealer,
      reason: healthy ? null : `no UDP probe to ${h.host}:${h.port} acknowledged ${h.probeAckAt ? `for ${Math.round((Date.now() - h.probeAckAt) / 1000)}s` : 'yet'}`,
    };
  }

  /**
   * The largest datagram to send to a hop. Where the whole path carries what our own link does, a
   * message (a TSO super-frame, or many small frames) goes as one datagram of up to 64 KB and the
   * kernel fragments and reassembles it: far cheaper than a system call per piece. Where a hop on
   * the path is smaller than our link, IP fragments would not pass it: we cut to the path MTU.
   */
  private maxDatagram(hop: Hop): number {
    return hop.pmtu >= this.config.underlayMtu ? MAX_UDP_PAYLOAD : hop.pmtu - IP_UDP;
  }

  // ---- frames from local containers (the TAP)

  private onFrames(n: number): void {
    const tap = this.tap!;
    // Frames per destination peer, sent as few messages as the path allows, after the batch.
    const out = new Map<PeerName, Buffer[]>();
    for (let i = 0; i < n; i++) {
      const f = tap.received(i);
      if (f.length < VNET_HDR + 14) continue;
      const multi = (f[VNET_HDR] & 1) === 1;
      const dmac = multi ? '' : macText(f, VNET_HDR);
      const owner = multi ? undefined : (this.config.macOwner(dmac) ?? this.learned.get(dmac));
      const targets = owner !== undefined ? (this.destinations.has(owner) ? [owner] : []) : [...this.destinations];
      if (targets.length === 0) continue;
      const copy = Buffer.from(f); // the slot is reused by the next read
      for (const t of targets) {
        let list = out.get(t);
        if (!list) out.set(t, (list = []));
        list.push(copy);
        this.stats.framesOut++;
        this.stats.bytesOut += copy.length - VNET_HDR;
      }
    }
    for (const [dst, frames] of out) this.sendFrames(dst, frames);
    this.udp?.flush();
  }

  private nextHop(dst: PeerName): Hop | undefined {
    return this.hops.get(dst) ?? this.hops.get(this.mesh.routes.unicast.get(dst) ?? '');
  }

  /** Packs frames into messages that fit the path (a big frame gets a message of its own). */
  private sendFrames(dst: PeerName, frames: Buffer[]): void {
    const hop = this.nextHop(dst);
    if (!hop) {
      this.stats.dropped += frames.length;
      return;
    }
    const dstBytes = peerNameToBytes(dst);
    const budget = this.maxDatagram(hop) - HEADER - MESSAGE_HEADER - (hop.sealer ? SEAL_OVERHEAD : 0);
    let batch: Buffer[] = [];
    let size = 0;
    const emit = () => {
      if (batch.length === 0) return;
      this.sendMessage(hop, encodeMessage(this.self, dstBytes, batch));
      batch = [];
      size = 0;
    };
    for (const f of frames) {
      if (size > 0 && size + 4 + f.length > budget) emit();
      batch.push(f);
      size += 4 + f.length;
    }
    emit();
  }

  /** Seals (if the hop is encrypted) and sends a message, in fragments when it exceeds the path. */
  private sendMessage(hop: Hop, plain: Buffer): void {
    const udp = this.udp;
    if (!udp) return;
    const body = hop.sealer ? hop.sealer.seal(plain) : plain;
    const max = this.maxDatagram(hop);
    if (HEADER + body.length <= max) {
      const s = udp.nextSlot();
      writeHeader(s, KIND_FRAMES, !!hop.sealer, this.self);
      body.copy(s, HEADER);
      udp.commit(HEADER + body.length, hop.addr, hop.port);
      return;
    }
    const chunk = max - FRAGMENT_HEADER;
    const count = Math.ceil(body.length / chunk);
    const id = (this.fragmentId = (this.fragmentId + 1) >>> 0);
    for (let i = 0; i < count; i++) {
      const part = body.subarray(i * chunk, Math.min(body.length, (i + 1) * chunk));
      const s = udp.nextSlot();
      writeHeader(s, KIND_FRAGMENT, !!hop.sealer, this.self);
      s.writeUInt32BE(id, HEADER);
      s.writeUInt16BE(i, HEADER + 4);
      s.writeUInt16BE(count, HEADER + 6);
      part.copy(s, FRAGMENT_HEADER);
      udp.commit(FRAGMENT_HEADER + part.length, hop.addr, hop.port);
    }
  }

  // ---- datagrams from other routers

  private onDatagrams(n: number): void {
    const udp = this.udp!;
    for (let i = 0; i < n; i++) {
      try {
        this.onDatagram(udp.received(i), udp.fromAddress(i), udp.truncated(i));
      } catch {
        this.stats.malformed++;
      }
    }
    this.tap?.flush();
    this.udp?.flush();
  }

  private onDatagram(d: Buffer, from: number, truncated: boolean): void {
    if (truncated) throw new Error('truncated');
    const h = readHeader(d);
    const hop = this.hopByBytes.get(h.hop.toString('hex'));
    // Only from a peer we are connected to, from its own address.
    if (!hop || hop.addr !== from) {
      this.stats.refused++;
      return;
    }
    if (h.kind === KIND_PROBE) {
      // The size it was sent at, as it arrived: a probe that lost bytes on the way does not count.
      if (d.length >= HEADER + 4 && d.readUInt32BE(HEADER) === d.length + IP_UDP) this.channel.unicast(hop.name, pack({ probe: d.length + IP_UDP }));
      return;
    }
    // An encrypted hop accepts only sealed packets, and the other way round.
    if (h.sealed !== !!hop.opener) {
      this.stats.refused++;
      return;
    }
    let body: Buffer | null;
    if (h.kind === KIND_FRAGMENT) {
      if (d.length < FRAGMENT_HEADER) throw new Error('short fragment');
      body = this.reassembler.add(hop.name, d.readUInt32BE(HEADER), d.readUInt16BE(HEADER + 4), d.readUInt16BE(HEADER + 6), d.subarray(FRAGMENT_HEADER));
      if (!body) return;
    } else {
      body = d.subarray(HEADER);
    }
    const plain = hop.opener ? hop.opener.open(body) : body;
    if (!plain) {
      this.stats.refused++;
      return;
    }
    const m = decodeMessage(plain);
    const dst = peerNameFromBytes(m.dst);
    if (dst !== this.mesh.name) {
      // Relay towards the destination; frames are not looked at.
      const next = this.nextHop(dst);
      if (!next || next === hop || m.hops === 0) {
        this.stats.dropped++;
        return;
      }
      this.stats.relayed++;
      const fwd = Buffer.from(plain);
      fwd[HOPS_OFFSET] = m.hops - 1;
      this.sendMessage(next, fwd);
      return;
    }
    const src = peerNameFromBytes(m.src);
    for (const f of m.frames) {
      // Learn which peer a source MAC lives at; never our own MACs.
      const smac = macText(f, VNET_HDR + 6);
      if (!this.config.macOwner(smac) && this.learned.get(smac) !== src) {
        // Bounded: a peer sending from ever new MACs must not grow our memory without end.
        if (this.learned.size >= MAX_LEARNED) this.learned.delete(this.learned.keys().next().value!);
        this.learned.set(smac, src);
      }
      this.tap?.queue(f);
      this.stats.framesIn++;
      this.stats.bytesIn += f.length - VNET_HDR;
    }
  }

  // ---- path MTU probes

  /**
   * Path MTU discovery, a binary search over rounds: each second every hop gets DF-marked probes
   * at the underlay MTU (has the path grown?), at the known size (is it still alive?) and halfway
   * between the known size and the smallest that failed. A probe unacknowledged by the next round
   * failed; a known size that fails sends the search back to the floor.
   */
  private probe(): void {
    const p = this.probes;
    if (!p) return;
    this.reassembler.expire();
    const top = this.config.underlayMtu;
    for (const hop of this.hops.values()) {
      for (const size of hop.pending) {
        if (size <= hop.pmtu) {
          hop.pmtu = PMTU_FLOOR;
          hop.failedAt = Math.max(size, PMTU_FLOOR + 1);
        } else hop.failedAt = Math.min(hop.failedAt, size);
      }
      hop.pending.clear();
      const sizes = new Set<number>([top, hop.pmtu]);
      if (hop.failedAt - hop.pmtu > 8) sizes.add(Math.floor((hop.pmtu + hop.failedAt) / 2));
      for (const size of sizes) {
        const s = p.nextSlot();
        const len = size - IP_UDP;
        writeHeader(s, KIND_PROBE, false, this.self);
        s.writeUInt32BE(size, HEADER);
        s.fill(0, HEADER + 4, len);
        p.commit(len, hop.addr, hop.port);
        hop.pending.add(size);
      }
    }
    p.flush();
  }

  // The channel carries only probe acknowledgements.
  gossip(): GossipData | null {
    return null;
  }

  onGossip(): GossipData | null {
    return null;
  }

  onUnicast(src: PeerName, payload: Uint8Array): void {
    const v = unpack(payload) as { probe?: unknown };
    if (typeof v !== 'object' || v === null || typeof v.probe !== 'number') throw new Error('sleeve probe acknowledgement is malformed');
    const hop = this.hops.get(src);
    if (!hop || !hop.pending.delete(v.probe)) return;
    hop.pmtu = Math.max(hop.pmtu, v.probe);
    // The path grew past an old failure: search above again.
    if (hop.failedAt <= hop.pmtu) hop.failedAt = this.config.underlayMtu + 1;
    hop.probeAckAt = Date.now();
  }

  counters(): typeof this.stats & { udp: ReturnType<UdpPort['stats']> | null; tap: ReturnType<TapPort['stats']> | null; reassembling: number } {
    return { ...this.stats, udp: this.udp?.stats() ?? null, tap: this.tap?.stats() ?? null, reassembling: this.reassembler.size };
  }
}
