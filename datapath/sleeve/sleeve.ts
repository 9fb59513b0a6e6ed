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
import {
  type Gossip,
  type GossipData,
  type Gossiper,
  type MeshView,
  pack,
  unpack,
  peerNameFromBytes,
  peerNameToBytes,
  type PeerName,
} from '../../mesh/index.js';
import { formatHostPort, hostOf } from '../../net/host-port.js';
import { underlayAddressProblem } from '../../net/validate.js';
import { ensurePort, linkState } from '../bridge.js';
import type { Backend, PathHealth, Programme } from '../backend.js';
import { ipBatch } from '../../net/command.js';
import {
  FastPath,
  HopCipher,
  META,
  TapPort,
  UdpPort,
  ipv6Handle,
  isIpv6Handle,
  releaseIpv6Handle,
  nativeConstantsDiffer,
  type FastRoute,
} from '../../native/index.js';
import { isIpv4, parseIp } from '../../net/addr.js';
import { PROBE_INTERVAL_MS, PathMtu, parseProbeAck } from './path-mtu.js';
import {
  FRAGMENT_HEADER,
  FragmentAssembler,
  FragmentIds,
  HEADER,
  HOPS_OFFSET,
  IP_UDP,
  IP_UDP6,
  KIND_FRAGMENT,
  KIND_FRAMES,
  KIND_PROBE,
  MAX_MESSAGE,
  MAX_UDP_PAYLOAD,
  MESSAGE_HEADER,
  PROBE_IN_USE,
  PacketOpener,
  PacketSealer,
  SEALED,
  SEAL_COUNTER,
  SEAL_OVERHEAD,
  SEAL_TAG,
  type Opener,
  type Sealer,
  VNET_HDR,
  WIRE_FORMAT,
  checkMessage,
  encodeMessage,
  headerKind,
  writeHeader,
  writeMessageHeader,
} from './packet.js';
import { every, type Tick } from '../../lib/ticker.js';

const SLEEVE_TAP = 'weft-sleeve';
const CHANNEL = 'sleeve';
/** Remote MACs learnt from sleeve traffic, at most (the oldest go first). */
const MAX_LEARNED = 16_384;
/** `WEFT_SLEEVE_GSO=off` sends big messages as IP-fragmented datagrams instead of segment trains (for comparison). */
const GSO_WANTED = process.env.WEFT_SLEEVE_GSO !== 'off';
/** `WEFT_SLEEVE_FAST=off` keeps every packet in JavaScript (for comparison). */
const FAST_WANTED = process.env.WEFT_SLEEVE_FAST !== 'off';

/** A directly connected peer, as the sleeve sees it. */
interface Hop {
  name: PeerName;
  /** The peer name's six bytes as a number (what datagrams carry). */
  id: number;
  /** Its underlay address as the addon's metadata word (IPv4, or an IPv6 handle). */
  addr: number;
  host: string;
  port: number;
  /** The IP and UDP headers' size on the way to it: 28 over IPv4, 48 over IPv6. */
  ipUdp: number;
  sealer: Sealer | null;
  opener: Opener | null;
  /** With the fast path, the addon's cipher that is both sealer and opener (one counter, one replay window). */
  cipher: HopCipher | null;
  /** The path MTU search and path check, both ways. */
  path: PathMtu;
  /** The source MAC of the last frame learnt from (a stream repeats it; the lookups are skipped while nothing was forgotten). */
  lastSourceMac: number;
  lastSourceForgets: number;
  /** Puts its fragmented messages back together (each hop its own, bounded: one cannot crowd out another). */
  assembler: FragmentAssembler;
}

export interface SleeveConfig {
  port: number;
  /** The overlay MTU (the TAP's). */
  mtu: () => number;
  /** The underlay interface MTU: the largest probe. */
  underlayMtu: number;
  /** Whether packets to and from this peer (at this underlay address) are sealed. */
  encrypt: (peer: PeerName, host: string) => boolean;
  /** Every MAC the endpoint table knows, with its peer. */
  macOwners: () => ReadonlyMap<string, PeerName>;
  /** Calls `fn` whenever the endpoint table changes. */
  onMacsChange: (fn: () => void) => void;
}

export interface SleeveHopStatus {
  pmtu: number;
  healthy: boolean;
  encrypted: boolean;
  reason: string | null;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
/** MAC texts by their 48-bit value: the lookups key on text, and a stream repeats a few MACs. */
const macTexts = new Map<number, string>();

function macText(b: Buffer, o: number): string {
  const v = b.readUIntBE(o, 6);
  let t = macTexts.get(v);
  if (t === undefined) {
    t = `${HEX[b[o]]}:${HEX[b[o + 1]]}:${HEX[b[o + 2]]}:${HEX[b[o + 3]]}:${HEX[b[o + 4]]}:${HEX[b[o + 5]]}`;
    if (macTexts.size >= MAX_LEARNED) macTexts.clear();
    macTexts.set(v, t);
  }
  return t;
}

export class Sleeve implements Gossiper, Backend {
  readonly kind = 'sleeve';
  readonly port = SLEEVE_TAP;
  private udp: UdpPort | null = null;
  private probes: UdpPort | null = null;
  private tap: TapPort | null = null;
  private readonly channel: Gossip;
  private readonly hops = new Map<PeerName, Hop>();
  private readonly hopById = new Map<number, Hop>();
  /** Frames of the TAP batch being handled, by destination peer: rx slot indices (reused). */
  private readonly framesByDst = new Map<PeerName, number[]>();
  /** Remote MACs seen in frames from each peer (for MACs the endpoint table does not know). */
  private readonly learned = new Map<string, PeerName>();
  /** Learnt MACs deleted so far (a hop's cached "already learnt" holds only while this is unchanged). */
  private forgets = 0;
  /** A message being built before it is sent in fragments (one at a time, reused). */
  private readonly scratch = Buffer.alloc(MAX_MESSAGE);
  private readonly self: Buffer;
  private readonly selfId: number;
  private timer: Tick | null = null;
  private readonly fragmentIds = new FragmentIds();
  /** Big messages go as trains of path-sized fragments in one send (UDP GSO); else as IP-fragmented datagrams. */
  private gso = false;
  /** Whether its socket reaches IPv6 peers too (dual-stack; not on a kernel without IPv6). */
  ipv6 = false;
  private dests = new Set<PeerName>();
  /** The native fast path and whether its tables need making again. */
  private fast: FastPath | null = null;
  /** The TAP's ifindex when plumb() last set its MTU and GSO size. */
  private tapIfindex: number | null = null;
  private fastStale = false;
  readonly stats = {
    framesOut: 0,
    framesIn: 0,
    bytesOut: 0,
    bytesIn: 0,
    relayed: 0,
    dropped: 0,
    refused: 0,
    malformed: 0,
  };
  lastError: string | null = null;

  constructor(
    private readonly mesh: MeshView,
    private readonly config: SleeveConfig,
  ) {
    this.self = peerNameToBytes(mesh.name);
    this.selfId = this.self.readUIntBE(0, 6);
    this.channel = mesh.registerChannel(CHANNEL, this);
  }

  /** Peers whose traffic goes by sleeve (the datapath decides). */
  get destinations(): ReadonlySet<PeerName> {
    return this.dests;
  }
  set destinations(peers: ReadonlySet<PeerName>) {
    if (peers.size === this.dests.size && [...peers].every((p) => this.dests.has(p))) return;
    this.dests = new Set(peers);
    this.refreshFastPath();
  }

  /**
   * The fast path's tables follow what JavaScript would decide: a route per remote MAC whose peer
   * is a sleeve destination behind a plain (unencrypted) hop, the plain hops, and every MAC the
   * endpoint table knows. Remade after the current turn of the event loop, once per burst of changes
   * (syncHops writes them at once: until then, the addon would refuse what a new encrypted hop sends,
   * not knowing its keys).
   */
  private refreshFastPath(): void {
    if (!this.fast || this.fastStale) return;
    this.fastStale = true;
    setImmediate(() => {
      this.fastStale = false;
      this.writeFastPath();
    });
  }

  private writeFastPath(): void {
    const fast = this.fast;
    if (!fast) return;
    const routes: FastRoute[] = [];
    const known: number[] = [];
    for (const [mac, owner] of this.config.macOwners()) {
      const value = Number.parseInt(mac.replaceAll(':', ''), 16);
      known.push(value);
      if (owner === this.mesh.name || !this.dests.has(owner)) continue;
      const hop = this.nextHop(owner);
      // With the fast path every encrypted hop's keys are the addon's (syncHops); this only guards.
      if (!hop || (hop.sealer && !hop.cipher)) continue;
      routes.push({
        mac: value,
        dst: peerNameToBytes(owner).readUIntBE(0, 6),
        addr: hop.addr,
        port: hop.port,
        max: this.maxDatagram(hop),
        cipher: hop.cipher,
      });
    }
    const hops = [...this.hops.values()]
      .filter((h) => !h.sealer || h.cipher)
      .map((h) => ({ id: h.id, addr: h.addr, cipher: h.cipher }));
    fast.update(this.selfId, routes, hops, known);
  }

  /** Opens the TAP (on the bridge) and the UDP port. Throws with the reason when it cannot. */
  async start(): Promise<void> {
    const slotSize = 65536 + 64;
    this.udp = new UdpPort(
      { port: this.config.port, slots: 64, slotSize, rcvbuf: 8 << 20, sndbuf: 8 << 20, gro: true },
      (n) => this.guard(() => this.onDatagrams(n)),
    );
    this.gso = GSO_WANTED && this.udp.features.gso;
    // The probes' socket is dual-stack as well when the kernel has IPv6: the data socket's says.
    this.ipv6 = this.udp.features.ipv6;
    this.probes = new UdpPort({ port: 0, dontFragment: true, slots: 16, slotSize: 9216 }, () => undefined);
    this.tap = new TapPort({ name: SLEEVE_TAP, vnetHdr: true, slots: 32 }, (n) => this.guard(() => this.onFrames(n)));
    const formatDiffers = nativeConstantsDiffer(WIRE_FORMAT);
    if (formatDiffers) this.lastError = `fast path off: ${formatDiffers}`;
    if (FAST_WANTED && !formatDiffers) {
      this.fast = new FastPath();
      this.fast.link(this.tap, this.udp);
      this.config.onMacsChange(() => this.refreshFastPath());
    }
    await this.plumb();
    this.timer = every(PROBE_INTERVAL_MS, () => this.guard(() => this.probe()));
    this.mesh.on('connection-established', () => this.syncHops());
    this.mesh.on('connection-removed', () => this.syncHops());
    this.syncHops();
  }

  /** The TAP as an isolated, non-learning, ARP-suppressing port of the bridge. Also used to repair. */
  async plumb(): Promise<string[]> {
    // Super-frames a little under 64 KB fit one datagram with our headers. gso_max_size is not in
    // sysfs: set once per TAP (its ifindex), and again when the MTU is not ours.
    const tap = linkState(SLEEVE_TAP);
    if (!tap || tap.ifindex !== this.tapIfindex || tap.mtu !== this.config.mtu()) {
      await ipBatch([`link set ${SLEEVE_TAP} mtu ${this.config.mtu()} gso_max_size 65000`]);
      this.tapIfindex = linkState(SLEEVE_TAP)?.ifindex ?? null;
    }
    return ensurePort(SLEEVE_TAP, 'sleeve TAP');
  }

  // ---- the datapath's backend

  /** The peers whose traffic goes by sleeve (the datapath decides); routes per MAC come from the endpoint table. */
  async program(p: Programme): Promise<{ added: number; removed: number }> {
    this.destinations = new Set(p.peers.map((x) => x.name));
    return { added: 0, removed: 0 };
  }

  health(peer: PeerName): PathHealth {
    const h = this.hopStatus(peer);
    return h ? { healthy: h.healthy, reason: h.reason } : { healthy: false, reason: 'no direct connection' };
  }

  /** The sleeve's traffic stops with its router: nothing to presume after a restart. */
  async presumed(): Promise<string[]> {
    return [];
  }

  stop(): void {
    this.timer?.stop();
    this.timer = null;
    // Closing the TAP's descriptor removes the interface.
    this.tap?.close();
    this.udp?.close();
    this.probes?.close();
    this.tap = this.udp = this.probes = null;
    this.fast = null;
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
    for (const c of this.mesh.neighbours()) {
      seen.add(c.name);
      const host = hostOf(c.addr);
      const old = this.hops.get(c.name);
      const keys = c.sleeveKeys;
      const encrypted = !!keys && this.config.encrypt(c.name, host);
      if (old && old.host === host && old.port === c.port && !!old.sealer === encrypted) continue;
      const v4 = isIpv4(host);
      // An address no datapath can use (link-local, 0.0.0.0/8: see net/validate.ts), or IPv6 on a kernel
      // without it (an IPv4 socket): no hop, and none left to where the peer was before either.
      const problem = underlayAddressProblem(host) ?? (v4 || this.ipv6 ? null : 'no IPv6 here');
      let addr = 0;
      try {
        if (!problem) addr = v4 ? parseIp(host) : ipv6Handle(host);
      } catch (err) {
        this.lastError = `no sleeve hop to ${host}: ${(err as Error).message}`; // the handle table full
      }
      if (problem || addr === 0) {
        if (old) this.dropHop(old);
        continue;
      }
      const id = peerNameToBytes(c.name).readUIntBE(0, 6);
      // With the fast path the keys live in the addon, shared by both paths; else in JavaScript.
      const cipher = encrypted && this.fast ? new HopCipher(keys!.send, keys!.receive) : null;
      const hop: Hop = {
        name: c.name,
        id,
        addr,
        host,
        port: c.port,
        ipUdp: v4 ? IP_UDP : IP_UDP6,
        sealer: cipher ?? (encrypted ? new PacketSealer(keys!.send) : null),
        opener: cipher ?? (encrypted ? new PacketOpener(keys!.receive) : null),
        cipher,
        path: old ? old.path.moved() : this.newPath(c.name),
        lastSourceMac: -1,
        lastSourceForgets: 0,
        // Fragments under way to the hop as it was are not joined to the new one's.
        assembler: new FragmentAssembler(),
      };
      this.hops.set(c.name, hop);
      this.hopById.set(id, hop);
      if (old && old.addr !== hop.addr) this.releaseAddr(old.addr);
    }
    for (const [name, hop] of this.hops) if (!seen.has(name)) this.dropHop(hop);
    for (const [mac, p] of this.learned) {
      if (this.mesh.inTopology(p)) continue;
      this.learned.delete(mac);
      this.forgets++;
    }
    this.writeFastPath();
  }

  /** Forgets a hop (its datagrams are refused from now on). */
  private dropHop(hop: Hop): void {
    this.hops.delete(hop.name);
    if (this.hopById.get(hop.id) === hop) this.hopById.delete(hop.id);
    this.releaseAddr(hop.addr);
  }

  /** An IPv6 address's handle goes back to the addon once no hop has that address. */
  private releaseAddr(addr: number): void {
    if (isIpv6Handle(addr) && ![...this.hops.values()].some((h) => h.addr === addr)) releaseIpv6Handle(addr);
  }

  /** Status of the sleeve to a direct peer. */
  hopStatus(peer: PeerName): SleeveHopStatus | null {
    const h = this.hops.get(peer);
    if (!h) return null;
    const now = Date.now();
    const healthy = h.path.healthy(now);
    return {
      pmtu: h.path.pmtu,
      healthy,
      encrypted: !!h.sealer,
      reason: healthy ? null : h.path.reason(now, formatHostPort(h.host, h.port)),
    };
  }

  /**
   * The largest datagram to send to a hop. Where the whole path carries what our own link does, a
   * message (a TSO super-frame, or many small frames) goes as one datagram of up to 64 KB and the
   * kernel fragments and reassembles it: far cheaper than a system call per piece. Where a hop on
   * the path is smaller than our link, IP fragments would not pass it: we cut to the path MTU.
   */
  private maxDatagram(hop: Hop): number {
    const pmtu = hop.path.pmtu;
    if (this.gso) return pmtu - hop.ipUdp;
    return pmtu >= this.config.underlayMtu ? MAX_UDP_PAYLOAD : pmtu - hop.ipUdp;
  }

  // ---- frames from local containers (the TAP)

  // The hot path works on the shared slots in place: no frame is copied into a buffer of its own
  // (a 64 KB allocation per super-frame made V8 collect garbage several times a second).
  private onFrames(n: number): void {
    const tap = this.tap!;
    const rx = tap.rx;
    const byDst = this.framesByDst;
    // Its lists are empty between batches; those of peers long gone are dropped now and then.
    if (byDst.size > 4 * this.hops.size + 64) byDst.clear();
    for (let i = 0; i < n; i++) {
      const at = i * tap.slotSize;
      const len = tap.rxMeta[i * META];
      if (len < VNET_HDR + 14) continue;
      const multi = (rx[at + VNET_HDR] & 1) === 1;
      let owner: PeerName | undefined;
      if (!multi) {
        const dmac = macText(rx, at + VNET_HDR);
        owner = this.config.macOwners().get(dmac) ?? this.learned.get(dmac);
      }
      if (owner !== undefined) {
        if (this.destinations.has(owner)) this.addFrame(byDst, owner, i, len);
      } else for (const t of this.destinations) this.addFrame(byDst, t, i, len);
    }
    for (const [dst, slots] of byDst) {
      if (slots.length > 0) this.sendTapFrames(dst, slots);
      slots.length = 0;
    }
    this.udp?.flush();
  }

  private addFrame(byDst: Map<PeerName, number[]>, dst: PeerName, slot: number, len: number): void {
    let list = byDst.get(dst);
    if (!list) byDst.set(dst, (list = []));
    list.push(slot);
    this.stats.framesOut++;
    this.stats.bytesOut += len - VNET_HDR;
  }

  /**
   * Frames of TAP slots to one peer. Plain hops whose path carries 64 KB datagrams get messages
   * written straight into UDP slots; sealed hops and small paths go through sendFrames.
   */
  private sendTapFrames(dst: PeerName, slots: number[]): void {
    const tap = this.tap!;
    const udp = this.udp;
    const hop = this.nextHop(dst);
    if (!hop || !udp) {
      this.stats.dropped += slots.length;
      return;
    }
    const max = this.maxDatagram(hop);
    if (hop.sealer || (!this.gso && max < MAX_UDP_PAYLOAD)) {
      this.sendFrames(
        dst,
        slots.map((i) => Buffer.from(tap.received(i))),
      );
      return;
    }
    const dstBytes = peerNameToBytes(dst);
    const tx = udp.tx;
    let start = -1; // where the datagram being filled starts in tx
    let o = 0;
    for (const i of slots) {
      const len = tap.rxMeta[i * META];
      const need = 4 + len;
      if (start >= 0 && o + need - start > max) {
        udp.commit(o - start, hop.addr, hop.port);
        start = -1;
      }
      if (start < 0) {
        if (HEADER + MESSAGE_HEADER + need > max) {
          // Larger than a datagram: a message of its own, sent in fragments.
          const m = this.scratch;
          writeMessageHeader(m, 0, this.self, dstBytes);
          m.writeUInt32BE(len, MESSAGE_HEADER);
          tap.rx.copy(m, MESSAGE_HEADER + 4, i * tap.slotSize, i * tap.slotSize + len);
          this.sendMessage(hop, m.subarray(0, MESSAGE_HEADER + need));
          continue;
        }
        start = udp.nextOffset();
        writeHeader(tx, KIND_FRAMES, false, this.self, start);
        writeMessageHeader(tx, start + HEADER, this.self, dstBytes);
        o = start + HEADER + MESSAGE_HEADER;
      }
      tx.writeUInt32BE(len, o);
      tap.rx.copy(tx, o + 4, i * tap.slotSize, i * tap.slotSize + len);
      o += need;
    }
    if (start >= 0) udp.commit(o - start, hop.addr, hop.port);
  }

  private nextHop(dst: PeerName): Hop | undefined {
    return this.hops.get(dst) ?? this.hops.get(this.mesh.dataRoutes().get(dst) ?? '');
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

  /**
   * Seals (if the hop is encrypted) and sends a message, in fragments when it exceeds the path. On an
   * encrypted hop each fragment is sealed on its own, its fragment header authenticated with it.
   */
  private sendMessage(hop: Hop, plain: Buffer): void {
    const udp = this.udp;
    if (!udp) return;
    const max = this.maxDatagram(hop);
    const seal = hop.sealer;
    if (HEADER + plain.length + (seal ? SEAL_OVERHEAD : 0) <= max) {
      const body = seal ? seal.seal(plain) : plain;
      const s = udp.nextSlot();
      writeHeader(s, KIND_FRAMES, !!seal, this.self);
      body.copy(s, HEADER);
      udp.commit(HEADER + body.length, hop.addr, hop.port);
      return;
    }
    const body = plain;
    const chunk = max - FRAGMENT_HEADER - (seal ? SEAL_OVERHEAD : 0);
    const count = Math.ceil(body.length / chunk);
    const id = this.fragmentIds.next();
    // With GSO, fragments go end to end in trains (each fragment a datagram of exactly `max` bytes
    // but the message's last), a train per slot, as large as a UDP datagram allows.
    const perSlot = this.gso ? Math.min(64, Math.floor(MAX_UDP_PAYLOAD / max)) : 1;
    const tx = udp.tx;
    for (let i = 0; i < count;) {
      const start = udp.nextOffset();
      let o = start;
      const end = Math.min(count, i + perSlot);
      for (; i < end; i++) {
        const from = i * chunk;
        const to = Math.min(body.length, from + chunk);
        writeHeader(tx, KIND_FRAGMENT, !!seal, this.self, o);
        tx.writeUInt32BE(id, o + HEADER);
        tx.writeUInt16BE(i, o + HEADER + 4);
        tx.writeUInt16BE(count, o + HEADER + 6);
        if (seal) {
          const sealed = seal.seal(body.subarray(from, to), tx.subarray(o + HEADER, o + FRAGMENT_HEADER));
          sealed.copy(tx, o + FRAGMENT_HEADER);
          o += FRAGMENT_HEADER + sealed.length;
        } else {
          body.copy(tx, o + FRAGMENT_HEADER, from, to);
          o += FRAGMENT_HEADER + to - from;
        }
      }
      udp.commit(o - start, hop.addr, hop.port, o - start > max ? max : 0);
    }
  }

  // ---- datagrams from other routers

  private onDatagrams(n: number): void {
    const udp = this.udp!;
    const rx = udp.rx;
    for (let i = 0; i < n; i++) {
      if (udp.handled(i)) continue;
      const start = i * udp.slotSize;
      const end = start + udp.rxMeta[i * META];
      const seg = udp.segmentSize(i) || end - start;
      // A train the kernel kept joined (GRO): each segment is a datagram of its own.
      const opened = udp.opened(i);
      for (let o = start; o < end; o += seg) {
        // A sealed datagram the fast path could not open: refused and counted there.
        if (opened && rx[o] === 0) continue;
        try {
          this.onDatagram(rx, o, Math.min(end, o + seg), udp.fromAddress(i), udp.truncated(i), opened);
        } catch {
          this.stats.malformed++;
        }
      }
    }
    this.tap?.flush();
    this.udp?.flush();
  }

  /**
   * The datagram at start..end of `buf` (the receive slots: looked at in place, copied only where
   * kept). `opened`: the fast path opened it in place if it is sealed (its plaintext follows the
   * counter; the tag is left at the end).
   */
  private onDatagram(buf: Buffer, start: number, end: number, from: number, truncated: boolean, opened: boolean): void {
    if (truncated) throw new Error('truncated');
    const length = end - start;
    const kind = headerKind(buf, start, end);
    const sealed = (kind & SEALED) !== 0;
    const hop = this.hopById.get(buf.readUIntBE(start + 2, 6));
    // Only from a peer we are connected to, from its own address.
    if (!hop || hop.addr !== from) {
      this.stats.refused++;
      return;
    }
    if ((kind & ~SEALED) === KIND_PROBE) {
      // The size it was sent at, as it arrived: a probe that lost bytes on the way does not count.
      if (length > PROBE_IN_USE && buf.readUInt32BE(start + HEADER) === length + hop.ipUdp)
        hop.path.onProbe(length + hop.ipUdp, buf[start + PROBE_IN_USE] === 1, Date.now());
      return;
    }
    // An encrypted hop accepts only sealed packets, and the other way round.
    if (sealed !== !!hop.opener) {
      this.stats.refused++;
      return;
    }
    let plain: Buffer | null;
    if ((kind & ~SEALED) === KIND_FRAGMENT) {
      if (length < FRAGMENT_HEADER) throw new Error('short fragment');
      const id = buf.readUInt32BE(start + HEADER);
      const index = buf.readUInt16BE(start + HEADER + 4);
      const count = buf.readUInt16BE(start + HEADER + 6);
      if (hop.opener && opened) {
        plain = hop.assembler.add(id, index, count, buf, start + FRAGMENT_HEADER + SEAL_COUNTER, end - SEAL_TAG);
      } else if (hop.opener) {
        // Authenticated before anything is kept of it.
        const chunk = hop.opener.open(
          buf.subarray(start + FRAGMENT_HEADER, end),
          buf.subarray(start + HEADER, start + FRAGMENT_HEADER),
        );
        if (!chunk) {
          this.stats.refused++;
          return;
        }
        plain = hop.assembler.add(id, index, count, chunk, 0, chunk.length);
      } else {
        plain = hop.assembler.add(id, index, count, buf, start + FRAGMENT_HEADER, end);
      }
      if (!plain) return;
    } else {
      if (!sealed && length >= HEADER + MESSAGE_HEADER && buf.readUIntBE(start + HEADER + 6, 6) === this.selfId) {
        this.deliver(hop, buf, start + HEADER, end);
        return;
      }
      const body = buf.subarray(start + HEADER, end);
      if (hop.opener && opened) plain = body.subarray(SEAL_COUNTER, body.length - SEAL_TAG);
      else plain = hop.opener ? hop.opener.open(body) : body;
      if (!plain) {
        this.stats.refused++;
        return;
      }
    }
    checkMessage(plain, 0, plain.length);
    if (plain.readUIntBE(6, 6) !== this.selfId) {
      // Relay towards the destination; frames are not looked at beyond their framing.
      const hops = plain[HOPS_OFFSET];
      const next = this.nextHop(peerNameFromBytes(plain.subarray(6, 12)));
      if (!next || next === hop || hops === 0) {
        this.stats.dropped++;
        return;
      }
      this.stats.relayed++;
      // A copy: `plain` may be a view of the receive slot.
      const fwd = Buffer.from(plain);
      fwd[HOPS_OFFSET] = hops - 1;
      this.sendMessage(next, fwd);
      return;
    }
    this.deliver(hop, plain, 0, plain.length);
  }

  /**
   * The frames of a message for us (at `at` in `buf`) into the TAP, learning source MACs. Checked
   * whole before any frame goes, so a malformed message delivers nothing.
   */
  private deliver(hop: Hop, buf: Buffer, at: number, end: number): void {
    checkMessage(buf, at, end);
    const src = peerNameFromBytes(buf.subarray(at, at + 6));
    for (let o = at + MESSAGE_HEADER; o < end;) {
      const len = buf.readUInt32BE(o);
      const f = o + 4;
      const smacValue = buf.readUIntBE(f + VNET_HDR + 6, 6);
      if (smacValue !== hop.lastSourceMac || hop.lastSourceForgets !== this.forgets) {
        hop.lastSourceMac = smacValue;
        hop.lastSourceForgets = this.forgets;
        // Learn which peer a source MAC lives at; never our own MACs.
        const smac = macText(buf, f + VNET_HDR + 6);
        if (!this.config.macOwners().has(smac) && this.learned.get(smac) !== src) {
          // Bounded: a peer sending from ever new MACs must not grow our memory without end.
          if (this.learned.size >= MAX_LEARNED) {
            this.learned.delete(this.learned.keys().next().value!);
            this.forgets++;
          }
          this.learned.set(smac, src);
        }
      }
      this.tap?.queueFrom(buf, f, f + len);
      this.stats.framesIn++;
      this.stats.bytesIn += len - VNET_HDR;
      o = f + len;
    }
  }

  // ---- path MTU probes

  /** Once a second: each hop's probes (path-mtu.ts says which), and what we owe its peer. */
  private probe(): void {
    const p = this.probes;
    if (!p) return;
    for (const hop of this.hops.values()) hop.assembler.reassembler.expire();
    let changed = false;
    for (const hop of this.hops.values()) {
      const now = Date.now();
      const round = hop.path.round(now);
      changed ||= round.changed;
      for (const { size, inUse } of round.probes) {
        const s = p.nextSlot();
        const len = size - hop.ipUdp;
        writeHeader(s, KIND_PROBE, false, this.self);
        s.writeUInt32BE(size, HEADER);
        s.fill(0, HEADER + 4, len);
        s[PROBE_IN_USE] = inUse ? 1 : 0;
        p.commit(len, hop.addr, hop.port);
      }
      hop.path.poll(now);
    }
    p.flush();
    if (changed) this.refreshFastPath();
  }

  private newPath(peer: PeerName): PathMtu {
    return new PathMtu(this.config.underlayMtu, (ack) => this.channel.unicast(peer, pack(ack)));
  }

  // The channel carries only probe acknowledgements.
  gossip(): GossipData | null {
    return null;
  }

  onGossip(): GossipData | null {
    return null;
  }

  onUnicast(src: PeerName, payload: Uint8Array): void {
    const ack = parseProbeAck(unpack(payload));
    const hop = this.hops.get(src);
    if (hop?.path.onAck(ack, Date.now())) this.refreshFastPath();
  }

  /** Counters of both paths: frames, bytes and refusals add the fast path's (also shown apart, as `fast`). */
  counters(): typeof this.stats & {
    udp: ReturnType<UdpPort['stats']> | null;
    tap: ReturnType<TapPort['stats']> | null;
    reassembling: number;
    fast: ReturnType<FastPath['stats']> | null;
  } {
    const fast = this.fast?.stats() ?? null;
    const s = { ...this.stats };
    if (fast) {
      s.framesOut += fast.framesOut;
      s.framesIn += fast.framesIn;
      s.bytesOut += fast.bytesOut;
      s.bytesIn += fast.bytesIn;
      s.refused += fast.refused;
    }
    let reassembling = 0;
    for (const h of this.hops.values()) reassembling += h.assembler.reassembler.size;
    return { ...s, udp: this.udp?.stats() ?? null, tap: this.tap?.stats() ?? null, reassembling, fast };
  }
}
