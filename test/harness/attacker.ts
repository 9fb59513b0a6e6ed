// What the attack tests do from inside a namespace (a container, or a stranger
// on the underlay): connect to a port, send hand-made UDP datagrams (from a
// forged source address, when the namespace has it), and record what arrives.
// Also the frames they carry: an Ethernet frame with an IPv4/UDP packet inside,
// wrapped as VXLAN or as a sleeve message.
import { spawn } from 'node:child_process';
import { run } from './exec.js';

const CONNECT = `
const net = require('node:net');
const [host, port, wait, local] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port), ...(local ? { localAddress: local } : {}) });
const done = (what) => { process.stdout.write(what); process.exit(0); };
s.on('connect', () => done('open'));
s.on('error', (e) => done('closed ' + (e.code || e.message)));
setTimeout(() => done('closed timeout'), Number(wait));`;

/** Whether a TCP connection from `ns` to host:port is accepted: 'open', or 'closed <why>'. */
export async function tcpConnect(
  ns: string,
  host: string,
  port: number,
  waitMs = 1500,
  localAddress?: string,
): Promise<string> {
  const r = await run(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      '-e',
      CONNECT,
      host,
      String(port),
      String(waitMs),
      ...(localAddress ? [localAddress] : []),
    ],
    { timeoutMs: waitMs + 5000 },
  );
  return r.stdout.trim() || `closed ${r.stderr.trim()}`;
}

const SEND = `
const dgram = require('node:dgram');
const [host, port, hex, from, count] = process.argv.slice(1);
const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
let n = Number(count || 1);
const next = () => (n-- > 0 ? s.send(Buffer.from(hex, 'hex'), Number(port), host, (e) => (e ? (process.stderr.write(String(e)), process.exit(1)) : setTimeout(next, 20))) : s.close());
s.bind({ address: from || undefined, port: 0 }, next);`;

/** Sends `payload` as UDP from `ns` (from address `from`, which the namespace must have) `count` times, 20 ms apart. */
export async function sendUdp(
  ns: string,
  host: string,
  port: number,
  payload: Buffer,
  from?: string,
  count = 3,
): Promise<void> {
  const r = await run('ip', [
    'netns',
    'exec',
    ns,
    process.execPath,
    '-e',
    SEND,
    host,
    String(port),
    payload.toString('hex'),
    from ?? '',
    String(count),
  ]);
  if (r.code !== 0) throw new Error(`sending UDP from ${ns} to ${host}:${port} failed: ${r.stderr.trim()}`);
}

const RECORD = `
const dgram = require('node:dgram');
const [port] = process.argv.slice(1).map(Number);
// Both families where the namespace has IPv6 (IPv4 senders show as themselves), else IPv4.
const start = (any, kind) => {
  const u = dgram.createSocket(kind);
  u.once('error', () => (any === '::' ? start('0.0.0.0', 'udp4') : process.exit(1)));
  u.on('message', (m, r) =>
    process.stdout.write(JSON.stringify({ from: r.address.replace(/^::ffff:/, ''), data: m.toString() }) + '\\n'));
  u.bind(port, any, () => process.stdout.write('ready\\n'));
};
start('::', 'udp6');
setTimeout(() => process.exit(0), 120000);`;

/** A UDP listener in `ns` that records every datagram (its source address and text). */
export async function udpRecorder(
  ns: string,
  port: number,
): Promise<{ received: () => { from: string; data: string }[]; stop: () => void }> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', RECORD, String(port)], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const got: { from: string; data: string }[] = [];
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`UDP recorder in ${ns} did not start`)), 10_000);
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === 'ready') {
          clearTimeout(t);
          resolve();
        } else if (line) got.push(JSON.parse(line) as { from: string; data: string });
      }
    });
    child.on('exit', (code) => reject(new Error(`UDP recorder in ${ns} exited (${code})`)));
  });
  return { received: () => [...got], stop: () => child.kill('SIGKILL') };
}

const macBytes = (mac: string) => Buffer.from(mac.replaceAll(':', ''), 'hex');
const ipBytes = (ip: string) => Buffer.from(ip.split('.').map(Number));

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i] << 8) | (b[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An Ethernet frame carrying an IPv4 UDP datagram (UDP checksum left 0, which IPv4 allows). */
export function udpFrame(o: {
  srcMac: string;
  dstMac: string;
  srcIp: string;
  dstIp: string;
  dstPort: number;
  text: string;
}): Buffer {
  const data = Buffer.from(o.text);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(40000, 0);
  udp.writeUInt16BE(o.dstPort, 2);
  udp.writeUInt16BE(8 + data.length, 4);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + data.length, 2);
  ip[8] = 64;
  ip[9] = 17;
  ipBytes(o.srcIp).copy(ip, 12);
  ipBytes(o.dstIp).copy(ip, 16);
  ip.writeUInt16BE(checksum(ip), 10);
  const eth = Buffer.concat([macBytes(o.dstMac), macBytes(o.srcMac), Buffer.from([0x08, 0x00])]);
  return Buffer.concat([eth, ip, udp, data]);
}

/** A VXLAN datagram's payload: the 8-byte header with `vni`, then the frame. */
export function vxlanPayload(vni: number, frame: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h[0] = 0x08;
  h.writeUIntBE(vni, 4, 3);
  return Buffer.concat([h, frame]);
}

const nameBytes = (peer: string) => Buffer.from(peer.replaceAll(':', ''), 'hex');

/** A plain sleeve datagram (datapath/sleeve/packet.ts): from hop `hop`, a message from `src` to `dst` with one frame. */
function sleevePayload(hop: string, src: string, dst: string, frame: Buffer): Buffer {
  const header = Buffer.concat([Buffer.from([1, 1]), nameBytes(hop)]);
  const message = Buffer.concat([nameBytes(src), nameBytes(dst), Buffer.from([16])]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(10 + frame.length);
  return Buffer.concat([header, message, len, Buffer.alloc(10), frame]);
}

/** The packet counter of the rule with this comment in an nft listing. */
export function ruleCounter(listing: string, comment: string): number {
  const line = listing.split('\n').find((l) => l.includes(`comment "${comment}"`));
  const m = line ? /counter packets (\d+)/.exec(line) : null;
  if (!m) throw new Error(`no counted rule "${comment}" in:\n${listing}`);
  return Number(m[1]);
}

/**
 * A stranger's try at a container through the overlay's doors on `host`: 5 VXLAN datagrams (port
 * 6784, weft's VNI) and 5 sleeve ones (6783, as relayed by peer `hop` to peer `dst`), each carrying a
 * UDP datagram to the container's port 9999 with the text "vxlan TAG" or "sleeve TAG"; from address
 * `from` when given (one of a peer's, borrowed to spoof it).
 */
export async function injectOverlayFrames(o: {
  ns: string;
  host: string;
  container: { mac: string; ip: string };
  hop: string;
  dst: string;
  tag: string;
  from?: string;
}): Promise<void> {
  const frame = (text: string) =>
    udpFrame({
      srcMac: '02:de:ad:be:ef:01',
      dstMac: o.container.mac,
      srcIp: '10.32.99.99',
      dstIp: o.container.ip,
      dstPort: 9999,
      text,
    });
  await sendUdp(o.ns, o.host, 6784, vxlanPayload(WEFT_VNI, frame(`vxlan ${o.tag}`)), o.from, 5);
  await sendUdp(o.ns, o.host, 6783, sleevePayload(o.hop, o.hop, o.dst, frame(`sleeve ${o.tag}`)), o.from, 5);
}

/** weft's VXLAN network identifier ("we"). */
export const WEFT_VNI = 0x7765;

/** Waits until both kinds of datagram with this tag reached the recorder, and nothing else did. */
export async function bothArrived(recorder: { received: () => { data: string }[] }, tag: string): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const texts = recorder.received().map((d) => d.data);
    if (texts.includes(`vxlan ${tag}`) && texts.includes(`sleeve ${tag}`))
      return recorder.received().every((d) => d.data.endsWith(tag));
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
