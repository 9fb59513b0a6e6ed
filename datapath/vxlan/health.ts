// Is the VXLAN path to each peer working, at full overlay MTU? Every second the
// router sends each directly connected peer a heartbeat: a VXLAN packet to the
// peer's VXLAN port whose inner frame is full-MTU-sized, addressed to the peer's
// bridge MAC, with a private ethertype. The receiving kernel decapsulates it;
// an nftables ingress rule on its VXLAN device counts such frames per sender
// MAC (and drops them). The receiver polls its counters (over netlink, in the
// call: nft-netlink.ts; through the long-lived nft without the addon) and tells the sender
// over the mesh; a connection is `fastdp` while the receiver says they arrive.
//
// What the receiver says: to a peer that reads acknowledgements as states (its
// own acknowledgements say `states` or carry `every`), only changes ("arriving",
// "missing") and a reminder every ten seconds (carrying `every`); an idle mesh
// then carries one message per peer per ten seconds instead of one a second. To
// any other peer (a router from before this, or one that has not yet shown it
// reads states), an acknowledgement each second the count moved, without `every`:
// the sender gives those the short window, since no "missing" will follow them.
import dgram from 'node:dgram';
import dns from 'node:dns';
import { isIP } from 'node:net';
import { existsSync } from 'node:fs';
import {
  type Gossip,
  type GossipData,
  type Gossiper,
  type MeshView,
  pack,
  unpack,
  type PeerName,
} from '../../mesh/index.js';
import { VNI, bridgeMac } from '../bridge.js';
import { VXLAN_DEV } from './fdb.js';
import { nft } from '../../net/command.js';
import { nftObjects, nftScript, nftSession } from '../../net/nft-session.js';
import { every, type Tick } from '../../lib/ticker.js';
import { readRuleCounters, type RuleCounts } from '../nft-netlink.js';

const HEARTBEAT_ETHERTYPE = 0x88b5;
const TABLE = 'weft_hb';
const CHANNEL = 'fastdp';
/** While heartbeats keep arriving, a peer that reads states is reminded this often (by default). */
const REMIND_MS = 10_000;
/** The reminder periods a peer may announce (`every`): others are refused as malformed. */
const MIN_REMIND_MS = 100;
const MAX_REMIND_MS = REMIND_MS;

export interface PathHealth {
  /** Last acknowledgement from the peer that our heartbeats arrive. */
  ackAt: number;
  /** Since when we have been sending to this peer. */
  since: number;
  /** The peer's reminder period when it sends only changes (0: it acknowledges every second). */
  every: number;
  /** When the peer said our heartbeats stopped arriving (0: it has not, since its last acknowledgement). */
  missingAt: number;
}

/** A peer's heartbeats as we receive them, and what we last told it. */
interface Arrivals {
  packets: number;
  /** When the count last moved. */
  movedAt: number;
  told: 'arriving' | 'missing' | null;
  toldAt: number;
  /** It reads our acknowledgements as states (its own say so): we send changes and reminders. */
  readsStates: boolean;
}

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.replaceAll(':', ''), 'hex');
}

/** A VXLAN packet carrying an Ethernet frame of `frameLen` bytes from `src` to `dst`. */
function heartbeatPacket(srcMac: string, dstMac: string, frameLen: number): Buffer {
  const vxlan = Buffer.alloc(8);
  vxlan[0] = 0x08; // VNI present
  vxlan.writeUIntBE(VNI, 4, 3);
  const frame = Buffer.alloc(Math.max(60, frameLen));
  macBytes(dstMac).copy(frame, 0);
  macBytes(srcMac).copy(frame, 6);
  frame.writeUInt16BE(HEARTBEAT_ETHERTYPE, 12);
  return Buffer.concat([vxlan, frame]);
}

export interface HealthOptions {
  intervalMs?: number;
  /** How often a peer that reads states hears that its heartbeats still arrive (default 10 s). */
  remindMs?: number;
  /**
   * Heartbeat packets received per peer, where something other than the kernel VXLAN devices
   * receives them (the OVS datapath counts them with a flow per peer); default: nftables on `devices`.
   */
  counter?: (peers: PeerName[]) => Promise<Map<PeerName, number>>;
  /** The VXLAN devices heartbeats arrive on (one per underlay family); default: the IPv4 one. */
  devices?: string[];
}

/**
 * Heartbeats go to underlay addresses, never names: Node's dgram looks each one up all the same
 * (dns.lookup's checks and a tick, every second per peer); an address is its own answer.
 */
const literalLookup = (
  host: string,
  family: unknown,
  done: (err: Error | null, address: string, family: number) => void,
) => {
  const f = isIP(host);
  if (f === 0) dns.lookup(host, family as number, done);
  else done(null, host, f);
};

export class FastdpHealth implements Gossiper {
  readonly paths = new Map<PeerName, PathHealth>();
  private readonly socket = dgram.createSocket({ type: 'udp4', lookup: literalLookup });
  /** For peers at IPv6 underlay addresses, made on first use. */
  private socket6: dgram.Socket | null = null;
  private readonly channel: Gossip;
  private readonly arrivals = new Map<PeerName, Arrivals>();
  private timer: Tick | null = null;
  private tableFor = '';
  /** Each peer's heartbeat packet, made again when our name or the MTU changes. */
  private readonly packets = new Map<PeerName, { key: string; packet: Buffer }>();
  /** Our bridge MAC, for our name (code run once a second runs cold: even this much shows in a profile). */
  private me = { name: '', mac: '' };
  /** The beat under way (a connection's first beat does not wait for the timer, nor run beside it). */
  private beating: Promise<void> | null = null;
  private readonly healthyListeners: (() => void)[] = [];
  private readonly intervalMs: number;
  private readonly remindMs: number;
  private readonly counter: ((peers: PeerName[]) => Promise<Map<PeerName, number>>) | null;
  private readonly devices: string[];
  lastError: string | null = null;

  constructor(
    private readonly mesh: MeshView,
    private readonly vxlanPort: number,
    private readonly mtu: () => number,
    private readonly addrOf: (peer: PeerName) => string | undefined,
    options: HealthOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 1000;
    this.remindMs = Math.min(MAX_REMIND_MS, Math.max(MIN_REMIND_MS, options.remindMs ?? REMIND_MS));
    this.counter = options.counter ?? null;
    this.devices = options.devices ?? [VXLAN_DEV];
    this.channel = mesh.registerChannel(CHANNEL, this);
    this.socket.on('error', (err) => (this.lastError = `heartbeat socket: ${err.message}`));
    this.socket.unref();
  }

  private socketFor(addr: string): dgram.Socket {
    if (!addr.includes(':')) return this.socket;
    if (!this.socket6) {
      this.socket6 = dgram.createSocket({ type: 'udp6', ipv6Only: true, lookup: literalLookup });
      this.socket6.on('error', (err) => (this.lastError = `heartbeat socket (IPv6): ${err.message}`));
      this.socket6.unref();
    }
    return this.socket6;
  }

  start(): void {
    this.timer = every(this.intervalMs, () => void this.beatOnce());
    // A new connection is heartbeaten (and its counting rule made) at once, not up to a period later.
    this.mesh.on('connection-established', (conn) => {
      // A new connection may be a restarted peer, of another version: it learns our state afresh,
      // and its word counts for the short window until it says again that it sends states.
      this.arrivals.delete(conn.name);
      const p = this.paths.get(conn.name);
      if (p) p.every = 0;
      if (this.timer) void this.beatOnce();
    });
  }

  /** Called when a peer's path becomes healthy (so the overlay choice need not wait for its next round). */
  onHealthy(fn: () => void): void {
    this.healthyListeners.push(fn);
  }

  stop(): void {
    this.timer?.stop();
    this.timer = null;
    this.socket.close();
    this.socket6?.close();
  }

  /**
   * Healthy when the peer acknowledged our heartbeats within three periods; for a peer that sends
   * only changes, when its last word is that they arrive and it is under two reminders old.
   */
  healthy(peer: PeerName): boolean {
    const p = this.paths.get(peer);
    if (!p || p.ackAt === 0 || p.missingAt !== 0) return false;
    return Date.now() - p.ackAt < (p.every ? 2 * p.every : 3 * this.intervalMs) + 500;
  }

  /** Heartbeats counted as arriving: the count moved within three periods. */
  private arriving(a: Arrivals, now: number): boolean {
    return a.movedAt !== 0 && now - a.movedAt < 3 * this.intervalMs + 500;
  }

  /** Why a peer's connection is not on fastdp, for status. */
  reason(peer: PeerName): string {
    const p = this.paths.get(peer);
    const addr = this.addrOf(peer);
    if (!addr) return 'no underlay address yet';
    const overhead = addr.includes(':') ? 70 : 50; // VXLAN over IPv6 or IPv4
    const why = `is UDP ${this.vxlanPort} blocked, or the path MTU below ${this.mtu() + overhead}?`;
    const secondsSince = (t: number) => Math.round((Date.now() - t) / 1000);
    if (p?.missingAt)
      return `VXLAN heartbeats not arriving at the peer (it said so ${secondsSince(p.missingAt)}s ago; ${why})`;
    if (!p || p.ackAt === 0) {
      return `no VXLAN heartbeat acknowledged yet${p ? ` (sending for ${secondsSince(p.since)}s; ${why})` : ''}`;
    }
    return `VXLAN heartbeats unacknowledged for ${secondsSince(p.ackAt)}s (${why})`;
  }

  private beatOnce(): Promise<void> {
    this.beating ??= this.beat().finally(() => (this.beating = null));
    return this.beating;
  }

  private async beat(): Promise<void> {
    const peers = this.mesh.neighbours().map((n) => n.name);
    // What is kept per peer goes with the peer.
    for (const byPeer of [this.paths, this.arrivals, this.packets])
      for (const p of [...byPeer.keys()]) if (!peers.includes(p)) byPeer.delete(p);
    if (this.me.name !== this.mesh.name) this.me = { name: this.mesh.name, mac: bridgeMac(this.mesh.name) };
    const me = this.me.mac;
    const mtu = this.mtu();
    const key = `${me} ${mtu}`;
    for (const p of peers) {
      const addr = this.addrOf(p);
      if (!addr) continue;
      if (!this.paths.has(p)) this.paths.set(p, { ackAt: 0, since: Date.now(), every: 0, missingAt: 0 });
      let made = this.packets.get(p);
      // Inner frame of the full overlay MTU plus its Ethernet header: the path must carry what containers send.
      if (made?.key !== key) this.packets.set(p, (made = { key, packet: heartbeatPacket(me, bridgeMac(p), mtu + 14) }));
      try {
        this.socketFor(addr).send(made.packet, this.vxlanPort, addr);
      } catch (err) {
        this.lastError = `heartbeat to ${addr}: ${(err as Error).message}`;
      }
    }
    try {
      await this.syncCounters(peers);
      this.lastError = null;
    } catch (err) {
      this.lastError = `heartbeat counters: ${(err as Error).message}`;
    }
  }

  /** One counting rule per peer on our VXLAN device's ingress; acknowledges peers whose count grew. */
  private async syncCounters(peers: PeerName[]): Promise<void> {
    if (this.counter) {
      this.countedAll(peers, await this.counter(peers));
      return;
    }
    // A device that is not there (yet) gets no chain: nftables refuses a hook on a missing device.
    const devices = this.devices.filter((d) => existsSync(`/sys/class/net/${d}`));
    const wanted = `${devices.join(',')} ${[...peers].sort().join(',')}`;
    if (wanted !== this.tableFor) {
      const rules = peers.map(
        (p) =>
          `    ether saddr ${bridgeMac(p)} ether type 0x${HEARTBEAT_ETHERTYPE.toString(16)} counter drop comment "${p}"`,
      );
      await nftScript(
        [
          `table netdev ${TABLE}`,
          `delete table netdev ${TABLE}`,
          `table netdev ${TABLE} {`,
          ...devices.flatMap((d, i) => [
            `  chain in${i === 0 ? '' : i} {`,
            `    type filter hook ingress device "${d}" priority -500;`,
            ...rules,
            `  }`,
          ]),
          `}`,
          '',
        ].join('\n'),
      );
      this.tableFor = wanted;
      for (const a of this.arrivals.values()) a.packets = 0;
    }
    // A peer's heartbeats arrive on its family's device: its count is the sum over the chains.
    let counted: RuleCounts | null = null;
    try {
      counted = readRuleCounters('netdev', TABLE);
    } catch {
      // Netlink refused (a seccomp or LSM policy, say) or timed out: nft can still say.
    }
    try {
      counted ??= await this.countsFromNft();
    } catch (err) {
      // The table gone (nft says so; over netlink a missing table reads as no rules): made again at
      // the next beat. Other errors (a time-out, say) leave it as it is.
      if (/No such file or directory/.test((err as Error).message)) this.tableFor = '';
      throw err;
    }
    // A rule of ours that is not there (a chain or the table removed underneath): made again at the
    // next beat. Each peer has one rule per device's chain.
    if (devices.length > 0 && peers.some((p) => counted.get(p)?.rules !== devices.length)) this.tableFor = '';
    this.countedAll(peers, new Map([...counted].map(([p, c]) => [p, c.packets])));
  }

  /** The counts through the long-lived nft (without the addon): a line written, its JSON read back. */
  private async countsFromNft(): Promise<RuleCounts> {
    const listing = await nftSession.list(`list table netdev ${TABLE}`);
    const counted: RuleCounts = new Map();
    for (const r of nftObjects<{ comment?: string; expr: { counter?: { packets: number } }[] }>(listing, 'rule')) {
      if (!r.comment) continue;
      const c = counted.get(r.comment) ?? { packets: 0, rules: 0 };
      c.packets += r.expr.find((e) => e.counter)?.counter?.packets ?? 0;
      c.rules++;
      counted.set(r.comment, c);
    }
    return counted;
  }

  /** Every neighbour's count: one the counter did not return (its rule or flow gone) has not moved. */
  private countedAll(peers: PeerName[], counts: Map<PeerName, number>): void {
    for (const p of peers) this.counted(p, counts.get(p) ?? this.arrivals.get(p)?.packets ?? 0);
  }

  /** A peer's heartbeat count, polled: tells the peer what changed (a counter made again starts at 0). */
  private counted(peer: PeerName, packets: number): void {
    const now = Date.now();
    const a = this.arrivalsOf(peer);
    const moved = packets > 0 && packets !== a.packets;
    a.packets = packets;
    if (moved) a.movedAt = now;
    if (!a.readsStates) {
      if (moved) this.tell(peer, a, 'arriving', now);
    } else if (this.arriving(a, now)) {
      if (a.told !== 'arriving' || now - a.toldAt >= this.remindMs) this.tell(peer, a, 'arriving', now);
    } else if (a.told === 'arriving' || (a.told === 'missing' && now - a.toldAt >= this.remindMs)) {
      // Said again at each reminder: a lost or overtaken "missing" must not leave the peer waiting.
      this.tell(peer, a, 'missing', now);
    }
  }

  private arrivalsOf(peer: PeerName): Arrivals {
    let a = this.arrivals.get(peer);
    if (!a) this.arrivals.set(peer, (a = { packets: 0, movedAt: 0, told: null, toldAt: 0, readsStates: false }));
    return a;
  }

  private tell(peer: PeerName, a: Arrivals, what: 'arriving' | 'missing', now: number): void {
    // `states` (and `every`) say that we read the peer's acknowledgements as states; `every` that
    // this one is a state, good until the next reminder.
    const msg = !a.readsStates
      ? { ack: a.packets, states: true }
      : what === 'arriving'
        ? { ack: a.packets, every: this.remindMs }
        : { missing: true, every: this.remindMs };
    // Not sent (no route): told nothing, so the next poll tries again.
    if (!this.channel.unicast(peer, pack(msg))) return;
    a.told = what;
    a.toldAt = now;
  }

  /** Removes the counting table (reset). */
  static async remove(): Promise<void> {
    await nft(['delete', 'table', 'netdev', TABLE]).catch(() => undefined);
  }

  // The channel carries only unicast acknowledgements: no state to gossip.
  gossip(): GossipData | null {
    return null;
  }

  onGossip(): GossipData | null {
    return null;
  }

  onUnicast(src: PeerName, payload: Uint8Array): void {
    const v = unpack(payload) as { ack?: unknown; missing?: unknown; every?: unknown; states?: unknown };
    if (
      typeof v !== 'object' ||
      v === null ||
      (typeof v.ack !== 'number' && v.missing !== true) ||
      (v.every !== undefined &&
        (typeof v.every !== 'number' ||
          !Number.isInteger(v.every) ||
          v.every < MIN_REMIND_MS ||
          v.every > MAX_REMIND_MS))
    )
      throw new Error('fastdp acknowledgement is malformed');
    const every = typeof v.every === 'number' ? v.every : 0;
    const p = this.paths.get(src);
    if (!p) return;
    const a = this.arrivalsOf(src);
    if ((every || v.states === true) && !a.readsStates) {
      // What we told it so far were per-second acknowledgements (short window): the next poll tells
      // it the state, good until a reminder.
      a.readsStates = true;
      a.told = null;
    }
    const was = this.healthy(src);
    p.every = every;
    if (v.missing === true) {
      p.missingAt ||= Date.now();
      return;
    }
    p.ackAt = Date.now();
    p.missingAt = 0;
    if (!was) for (const fn of this.healthyListeners) fn();
  }
}
