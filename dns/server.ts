// The DNS server: answers A and PTR for the weft domain from the name table,
// forwards everything else, as raw bytes, to the upstream servers from
// resolv.conf. UDP and TCP. Malformed queries get FORMERR (or are dropped when
// too short to answer); nothing a client sends can crash the router. Work is
// bounded for every input: clients only from the overlay and loopback (no open
// resolver on the underlay), one upstream socket whose queries carry ids of our
// own (a reply counts only from the server it was sent to, with its id and
// question), a cap on queries in flight, and on TCP connections.
import dgram from 'node:dgram';
import { randomInt } from 'node:crypto';
import { isIpv4, parseIp } from '../net/addr.js';
import { parseAddress } from '../net/host-port.js';
import { formatIp6, isIpv6, parseIp6 } from '../net/addr6.js';
import { canonicalIp } from '../net/validate.js';
import { UdpPort, nativeError } from '../native/index.js';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import dnsPacket, { type Answer, type Packet } from 'dns-packet';
import { type NameTable, normaliseName } from './table.js';

export interface DnsConfig {
  host: string;
  port: number;
  domain: string;
  ttl: number;
  /** Upstream servers ("ip" or "ip:port"); default: from resolv.conf. */
  upstreams: string[];
  upstreamTimeoutMs: number;
  /** Serve UDP through the native addon's batched port when it is built (default); false: Node's dgram. */
  batchedUdp?: boolean;
  /** Who may ask (an IPv4 address as a number); default: anyone. The router allows the overlay and loopback. */
  clients?: (addr: number) => boolean;
  /** An IPv6 address to serve on as well (UDP and TCP, the same port), and who may ask there (default: no one). */
  host6?: string;
  clients6?: (addr: string) => boolean;
  /** At most this many forwarded queries wait for an upstream at once (more get SERVFAIL at once). */
  maxInFlight?: number;
  /** At most this many TCP clients at once. */
  maxTcpClients?: number;
}

/** A forwarded query waiting for its upstream's answer. */
interface Pending {
  /** The client's own id, put back in the answer. */
  clientId: number;
  /** The question section as sent: the answer must carry the same. */
  question: Buffer;
  /** Upstreams still to try, the current one first. */
  upstreams: { host: string; port: number }[];
  deadline: number;
  msg: Buffer;
  resolve: (reply: Buffer | null) => void;
}

export function upstreamsFromResolvConf(path = '/etc/resolv.conf', exclude: string[] = []): string[] {
  try {
    return readFileSync(path, 'utf8')
      .split('\n')
      .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
      .filter((s): s is string => !!s && !exclude.includes(s));
  } catch {
    return [];
  }
}

/**
 * An upstream server as resolv.conf names it: "ip", "ip:port", "[v6]:port", or a bare IPv6 address
 * (as resolv.conf writes them: a bare "::1:53" is that address, port 53). IPv6 hosts in RFC 5952's
 * form; anything with a colon that is not IPv6 (a zone, "fe80::1%eth0", included) is refused.
 */
export function parseUpstream(text: string): { host: string; port: number } {
  const t = text.trim();
  const { host, port } = isIpv6(t) ? { host: t, port: 53 } : parseAddress(t, 53);
  if (!host.includes(':')) return { host, port };
  if (!isIpv6(host)) throw new Error(`"${text.slice(0, 60)}" is not an IPv6 address`);
  return { host: formatIp6(parseIp6(host)), port };
}

/**
 * Whether a reply's source is the upstream asked: `upstream` is in its one form (parseUpstream), so the
 * source (without a zone) is put in that form and compared. Never throws.
 */
function sameHost(upstream: string, from: string): boolean {
  if (!upstream.includes(':')) return upstream === from;
  try {
    return canonicalIp(from.replace(/%.*$/, '')) === upstream;
  } catch {
    return false;
  }
}

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3 } as const;

function shuffle<T>(xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/** The address a reverse name asks about: in-addr.arpa (IPv4), or ip6.arpa's 32 nibbles (IPv6, in its one form). */
function ptrToIp(name: string): string | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.in-addr\.arpa\.?$/i.exec(name);
  if (m) return `${m[4]}.${m[3]}.${m[2]}.${m[1]}`;
  const six = /^((?:[0-9a-f]\.){32})ip6\.arpa\.?$/i.exec(name);
  if (!six) return null;
  const hex = six[1].split('.').slice(0, 32).reverse().join('');
  return formatIp6(BigInt(`0x${hex}`));
}

export class DnsServer {
  private udp: dgram.Socket | null = null;
  /** With the native addon: one recvmmsg per batch of queries and one sendmmsg per batch of answers. */
  private batched: UdpPort | null = null;
  /** Which UDP I/O serves queries: 'batched' (the addon) or 'dgram' (Node's sockets). */
  udpIo: 'batched' | 'dgram' = 'dgram';
  private tcp: net.Server | null = null;
  /** On host6. */
  private udp6: dgram.Socket | null = null;
  private tcp6: net.Server | null = null;
  private tcpClients = 0;
  /** The one socket forwarded UDP queries go out of, and the queries waiting on it by the id we gave them. */
  /** The upstream sockets, one per family (made when first needed). */
  private upstreamSockets: { udp4?: dgram.Socket; udp6?: dgram.Socket } = {};
  private readonly pending = new Map<number, Pending>();
  private sweep: NodeJS.Timeout | null = null;
  readonly stats = {
    queries: 0,
    local: 0,
    nxdomain: 0,
    forwarded: 0,
    servfail: 0,
    formerr: 0,
    refusedClients: 0,
    overloaded: 0,
    strayReplies: 0,
  };
  private readonly domain: string;

  constructor(
    private readonly table: NameTable,
    readonly config: DnsConfig,
  ) {
    this.domain = normaliseName(config.domain);
  }

  inDomain(name: string): boolean {
    const n = normaliseName(name);
    return n === this.domain || n.endsWith(`.${this.domain}`);
  }

  async start(): Promise<void> {
    if (this.config.batchedUdp !== false && isIpv4(this.config.host) && !nativeError()) {
      this.startBatched();
    } else {
      await this.startDgram(this.config.host, false);
    }
    this.tcp = await this.listenTcp(this.config.host);
    if (this.config.host6) {
      await this.startDgram(this.config.host6, true);
      this.tcp6 = await this.listenTcp(this.config.host6);
    }
  }

  private async listenTcp(host: string): Promise<net.Server> {
    const tcp = net.createServer((s) => this.serveTcp(s));
    tcp.maxConnections = this.config.maxTcpClients ?? 64;
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen({ port: this.config.port, host, ipv6Only: host.includes(':') }, () => resolve());
    });
    return tcp;
  }

  /** Whether an IPv6 client may ask (counted when not). */
  private allowed6(addr: string): boolean {
    if (this.config.clients6?.(addr)) return true;
    this.stats.refusedClients++;
    return false;
  }

  /**
   * One query over UDP, whichever socket it came on: a plain A question for a local name is
   * answered at once (`later` false); anything else goes through the full path and its answer,
   * if any, comes later (`later` true).
   */
  private answerUdp(msg: Buffer, send: (reply: Buffer, later: boolean) => void): void {
    let fast: Buffer | null = null;
    try {
      fast = this.fastAnswer(msg);
    } catch {
      // the full path answers FORMERR or drops
    }
    if (fast) {
      this.stats.queries++;
      this.stats.local++;
      send(fast, false);
      return;
    }
    const copy = Buffer.from(msg); // a batched receive slot is reused by the next batch
    void this.handle(copy, 'udp').then((reply) => {
      if (reply) send(reply, true);
    });
  }

  /** Whether this client may ask (counted when not). */
  private allowed(addr: number): boolean {
    if (!this.config.clients || this.config.clients(addr)) return true;
    this.stats.refusedClients++;
    return false;
  }

  private startBatched(): void {
    const port: UdpPort = new UdpPort(
      { address: this.config.host, port: this.config.port, slots: 64, slotSize: 4096, rcvbuf: 4 << 20 },
      (n) => {
        for (let i = 0; i < n; i++) {
          const addr = port.fromAddress(i);
          if (!this.allowed(addr)) continue;
          const from = port.fromPort(i);
          this.answerUdp(port.received(i), (reply, later) => {
            if (reply.length > port.slotSize || this.batched !== port) return;
            port.queue(reply, addr, from);
            if (later) port.flush(); // answers of this batch go in one sendmmsg, below
          });
        }
        port.flush();
      },
    );
    this.batched = port;
    this.udpIo = 'batched';
  }

  /** A Node UDP socket on host (IPv6 only, or IPv4), for the clients its family's check allows. */
  private async startDgram(host: string, six: boolean): Promise<void> {
    const udp = dgram.createSocket({ type: six ? 'udp6' : 'udp4', ipv6Only: six });
    if (six) this.udp6 = udp;
    else this.udp = udp;
    const open = () => (six ? this.udp6 : this.udp) === udp;
    udp.on('message', (msg, rinfo) => {
      const ok = six
        ? rinfo.family === 'IPv6' && this.allowed6(rinfo.address)
        : rinfo.family === 'IPv4' && this.allowed(parseIp(rinfo.address));
      if (!ok) return;
      this.answerUdp(msg, (reply) => {
        if (open()) udp.send(reply, rinfo.port, rinfo.address); // not after close(): an answer may come later
      });
    });
    udp.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(this.config.port, host, () => resolve());
    });
  }

  private serveTcp(s: net.Socket): void {
    const from = (s.remoteAddress ?? '').replace(/^::ffff:/, '');
    let addr = -1;
    try {
      addr = parseIp(from);
    } catch {
      /* not IPv4 */
    }
    if (addr < 0 ? !(isIpv6(from) && this.allowed6(from)) : !this.allowed(addr)) {
      s.destroy();
      return;
    }
    let buf = Buffer.alloc(0);
    let waiting = 0;
    s.setTimeout(10_000, () => s.destroy());
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length > 70_000) return s.destroy();
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const q = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + q.length);
        // A client pipelining more than this many unanswered queries is not a resolver's stub.
        if (++waiting > 16) return s.destroy();
        void this.handle(q, 'tcp').then((reply) => {
          waiting--;
          if (!reply || s.destroyed) return;
          const len = Buffer.alloc(2);
          len.writeUInt16BE(reply.length);
          s.write(Buffer.concat([len, reply]));
        });
      }
    });
  }

  /**
   * The common case without decoding: one A/IN question for a name in the domain that has addresses,
   * no other sections. Reads the question from the bytes and writes the answer directly (answers
   * point back at the question's name). Anything else returns null and takes the full path.
   */
  fastAnswer(msg: Buffer): Buffer | null {
    if (msg.length < 17 || msg.length > 512) return null;
    // flags: a standard query (QR=0, opcode 0); exactly one question, nothing else.
    if ((msg[2] & 0xf8) !== 0 || msg.readUInt16BE(4) !== 1 || msg.readUInt32BE(6) !== 0 || msg.readUInt16BE(10) !== 0)
      return null;
    let i = 12;
    const labels: string[] = [];
    for (;;) {
      if (i >= msg.length) return null;
      const len = msg[i];
      if (len === 0) break;
      if (len > 63 || i + 1 + len > msg.length) return null;
      labels.push(msg.toString('latin1', i + 1, i + 1 + len).toLowerCase());
      i += 1 + len;
    }
    const qEnd = i + 5;
    if (qEnd !== msg.length || msg.readUInt16BE(i + 1) !== 1 || msg.readUInt16BE(i + 3) !== 1) return null;
    const name = `${labels.join('.')}.`;
    if (!this.inDomain(name)) return null;
    const ips = this.table.lookup(name, 4);
    if (ips.length === 0 || ips.length > 25) return null; // NXDOMAIN, no A (NODATA) and big answers: the full path
    const uniq = shuffle([...new Set(ips)]);
    const out = Buffer.allocUnsafe(qEnd + 16 * uniq.length);
    msg.copy(out, 0, 0, qEnd);
    out[2] = 0x84 | (msg[2] & 0x01); // QR, AA, keep RD
    out[3] = 0x80; // RA, NOERROR
    out.writeUInt16BE(uniq.length, 6);
    let o = qEnd;
    for (const ip of uniq) {
      out.writeUInt16BE(0xc00c, o); // the name: a pointer to the question's
      out.writeUInt16BE(1, o + 2); // A
      out.writeUInt16BE(1, o + 4); // IN
      out.writeUInt32BE(this.config.ttl, o + 6);
      out.writeUInt16BE(4, o + 10);
      const p = ip.split('.');
      for (let k = 0; k < 4; k++) out[o + 12 + k] = Number(p[k]);
      o += 16;
    }
    return out;
  }

  /** The answer to one query message (null: drop it). Never throws. */
  async handle(msg: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | null> {
    this.stats.queries++;
    const fast = this.fastAnswer(msg);
    if (fast) {
      this.stats.local++;
      return fast;
    }
    let q: Packet;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      return this.formerr(msg);
    }
    const question = q.questions?.[0];
    if (q.type !== 'query' || !question || typeof question.name !== 'string') return this.formerr(msg);
    const name = question.name;
    const opt = q.additionals?.find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined;
    const limit = transport === 'tcp' ? 65_535 : Math.max(512, Math.min(opt?.udpPayloadSize ?? 512, 4096));
    try {
      if (this.inDomain(name)) return this.answerLocal(q, name, question.type, opt !== undefined, limit);
      if (question.type === 'PTR') {
        const ip = ptrToIp(name);
        const names = ip ? this.table.reverse(ip) : [];
        if (names.length > 0) {
          return this.reply(
            q,
            RCODE.NOERROR,
            names.map((n) => ({ type: 'PTR', name, ttl: this.config.ttl, data: n.replace(/\.$/, '') }) as Answer),
            opt !== undefined,
            limit,
          );
        }
      }
      return await this.forward(msg, q, transport);
    } catch {
      return this.reply(q, RCODE.SERVFAIL, [], opt !== undefined, limit);
    }
  }

  private answerLocal(q: Packet, name: string, type: string, edns: boolean, limit: number): Buffer {
    this.stats.local++;
    if (this.table.lookup(name).length === 0) {
      this.stats.nxdomain++;
      return this.reply(q, RCODE.NXDOMAIN, [], edns, limit);
    }
    // A name has addresses of either family or both: A answers IPv4, AAAA IPv6; no answer (NODATA) otherwise.
    if (type !== 'A' && type !== 'AAAA') return this.reply(q, RCODE.NOERROR, [], edns, limit);
    const ips = this.table.lookup(name, type === 'A' ? 4 : 6);
    const answers = shuffle([...new Set(ips)]).map((ip) => ({ type, name, ttl: this.config.ttl, data: ip }) as Answer);
    return this.reply(q, RCODE.NOERROR, answers, edns, limit);
  }

  /** Encodes a reply; over UDP, drops answers until it fits the client's size and sets TC. */
  private reply(q: Packet, rcode: number, answers: Answer[], edns: boolean, limit: number): Buffer {
    const build = (ans: Answer[], tc: boolean) =>
      dnsPacket.encode({
        id: q.id,
        type: 'response',
        flags:
          ((q.flags ?? 0) & dnsPacket.RECURSION_DESIRED) |
          dnsPacket.RECURSION_AVAILABLE |
          dnsPacket.AUTHORITATIVE_ANSWER |
          (tc ? dnsPacket.TRUNCATED_RESPONSE : 0) |
          rcode,
        questions: q.questions,
        answers: ans,
        additionals: edns ? [{ type: 'OPT', name: '.', udpPayloadSize: 4096 } as unknown as Answer] : [],
      });
    let out = build(answers, false);
    if (out.length <= limit) return out;
    let n = answers.length;
    while (n > 0) {
      n = Math.floor(n / 2);
      out = build(answers.slice(0, n), true);
      if (out.length <= limit) return out;
    }
    return build([], true);
  }

  private formerr(msg: Buffer): Buffer | null {
    this.stats.formerr++;
    // A response (QR set) is never answered: two servers, or one whose own address was forged as the
    // source, would answer each other's FORMERR for ever.
    if (msg.length < 12 || (msg[2] & 0x80) !== 0) return null;
    const out = Buffer.alloc(12);
    msg.copy(out, 0, 0, 2); // the query's id
    out[2] = 0x80; // response
    out[3] = RCODE.FORMERR;
    return out;
  }

  /** Sends the query to each upstream in turn (UDP: through the one upstream socket); SERVFAIL when none answers. */
  private async forward(msg: Buffer, q: Packet, transport: 'udp' | 'tcp'): Promise<Buffer> {
    const upstreams = this.config.upstreams.flatMap((up) => {
      try {
        return [parseUpstream(up)];
      } catch {
        return []; // not an address: resolv.conf had something else there
      }
    });
    if (transport === 'udp') {
      const r = upstreams.length > 0 ? await this.forwardUdp(msg, upstreams) : null;
      if (r) {
        this.stats.forwarded++;
        return r;
      }
    } else {
      for (const up of upstreams) {
        try {
          const r = await this.forwardTcp(msg, up.host, up.port);
          this.stats.forwarded++;
          return r;
        } catch {
          /* next upstream */
        }
      }
    }
    this.stats.servfail++;
    return this.reply(q, RCODE.SERVFAIL, [], false, 512);
  }

  /** The question section of a message (from byte 12 to the end of its first question), or null. */
  private static question(msg: Buffer): Buffer | null {
    let i = 12;
    for (;;) {
      if (i >= msg.length) return null;
      const len = msg[i];
      if (len === 0) break;
      if (len > 63) return null;
      i += 1 + len;
    }
    return i + 5 <= msg.length ? msg.subarray(12, i + 5) : null;
  }

  private upstream(type: 'udp4' | 'udp6'): dgram.Socket {
    const have = this.upstreamSockets[type];
    if (have) return have;
    const s = dgram.createSocket(type);
    s.on('error', () => undefined);
    s.on('message', (m, r) => this.upstreamReply(m, r));
    s.bind(0);
    s.unref();
    this.upstreamSockets[type] = s;
    return s;
  }

  /** A reply on the upstream socket: taken only from the server asked, with our id and the same question. */
  private upstreamReply(m: Buffer, r: dgram.RemoteInfo): void {
    const p = m.length >= 12 ? this.pending.get(m.readUInt16BE(0)) : undefined;
    const up = p?.upstreams[0];
    const question = DnsServer.question(m);
    if (
      !p ||
      !up ||
      !sameHost(up.host, r.address) ||
      up.port !== r.port ||
      !question ||
      !question.equals(p.question) ||
      (m[2] & 0x80) === 0
    ) {
      this.stats.strayReplies++;
      return;
    }
    this.pending.delete(m.readUInt16BE(0));
    const out = Buffer.from(m);
    out.writeUInt16BE(p.clientId, 0);
    p.resolve(out);
  }

  /** One forwarded UDP query: a fresh id of ours, the upstreams in turn, null when none answered. */
  private forwardUdp(msg: Buffer, upstreams: { host: string; port: number }[]): Promise<Buffer | null> {
    const question = DnsServer.question(msg);
    if (!question) return Promise.resolve(null);
    if (this.pending.size >= (this.config.maxInFlight ?? 1024)) {
      this.stats.overloaded++;
      return Promise.resolve(null);
    }
    let id = randomInt(65536);
    while (this.pending.has(id)) id = (id + 1) & 0xffff;
    return new Promise((resolve) => {
      const sent = Buffer.from(msg);
      sent.writeUInt16BE(id, 0);
      const p: Pending = {
        clientId: msg.readUInt16BE(0),
        question: Buffer.from(question),
        upstreams: [...upstreams],
        deadline: 0,
        msg: sent,
        resolve,
      };
      this.pending.set(id, p);
      this.send(p);
      this.sweep ??= setInterval(() => this.expire(), Math.max(20, Math.min(250, this.config.upstreamTimeoutMs / 4)));
      this.sweep.unref();
    });
  }

  private send(p: Pending): void {
    const up = p.upstreams[0];
    p.deadline = Date.now() + this.config.upstreamTimeoutMs;
    this.upstream(up.host.includes(':') ? 'udp6' : 'udp4').send(p.msg, up.port, up.host);
  }

  /** Queries whose upstream did not answer in time go to the next upstream, or fail. */
  private expire(): void {
    const now = Date.now();
    for (const [id, p] of this.pending) {
      if (p.deadline > now) continue;
      p.upstreams.shift();
      if (p.upstreams.length > 0) {
        this.send(p);
      } else {
        this.pending.delete(id);
        p.resolve(null);
      }
    }
    if (this.pending.size === 0 && this.sweep) {
      clearInterval(this.sweep);
      this.sweep = null;
    }
  }

  private forwardTcp(msg: Buffer, host: string, port: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, host);
      let buf = Buffer.alloc(0);
      const t = setTimeout(() => s.destroy(new Error('timeout')), this.config.upstreamTimeoutMs);
      s.on('connect', () => {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(msg.length);
        s.write(Buffer.concat([len, msg]));
      });
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          clearTimeout(t);
          s.destroy();
          resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        }
      });
      s.on('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  close(): void {
    if (this.sweep) clearInterval(this.sweep);
    for (const p of this.pending.values()) p.resolve(null);
    this.pending.clear();
    this.upstreamSockets.udp4?.close();
    this.upstreamSockets.udp6?.close();
    this.upstreamSockets = {};
    this.udp?.close();
    this.batched?.close();
    this.udp = this.batched = null;
    this.tcp?.close();
    this.udp6?.close();
    this.tcp6?.close();
    this.udp6 = null;
  }
}
