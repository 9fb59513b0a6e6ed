// The native addon: batched UDP and TAP ports, inside a namespace the test makes.
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  FastPath,
  HopCipher,
  TapPort,
  UdpPort,
  ipv6Handle,
  nativeError,
  releaseIpv6Handle,
} from '../../native/index.js';
import {
  FRAGMENT_HEADER,
  HEADER,
  KIND_FRAGMENT,
  KIND_FRAMES,
  PacketOpener,
  PacketSealer,
  Reassembler,
  SEALED,
  decodeMessage,
  encodeMessage,
  writeHeader,
} from '../../datapath/sleeve/packet.js';
import { parseIp } from '../../net/addr.js';
import { must, run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { runPrefix } from '../harness/cluster.js';

const ns = `${runPrefix()}nat${randomBytes(2).toString('hex')}`;
const netns = `/var/run/netns/${ns}`;
const LO = parseIp('127.0.0.1');

const openFds = () => readdirSync('/proc/self/fd').length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Gives the TAP `tap` the address NET.1/24 in the test namespace, with NET.2 at the remote MAC
 * 02:aa:bb:cc:dd:01: what send(size) sends (a UDP datagram of that many 7s to NET.2) leaves by the TAP.
 */
async function routeToRemote(tap: string, net: string): Promise<(size: number) => Promise<unknown>> {
  await must('ip', ['-n', ns, 'addr', 'add', `${net}.1/24`, 'dev', tap]);
  await must('ip', ['-n', ns, 'link', 'set', tap, 'up']);
  await must('ip', [
    '-n',
    ns,
    'neigh',
    'replace',
    `${net}.2`,
    'lladdr',
    '02:aa:bb:cc:dd:01',
    'dev',
    tap,
    'nud',
    'permanent',
  ]);
  return (size) =>
    run('ip', [
      'netns',
      'exec',
      ns,
      process.execPath,
      '-e',
      `const d=require('dgram').createSocket('udp4');d.send(Buffer.alloc(${size},7),9,'${net}.2',()=>d.close())`,
    ]);
}

/**
 * The fast path's tables for one remote MAC at peer `dst`, which is also the one hop (127.0.0.1:port),
 * with datagrams of at most `max` bytes, encrypted with `cipher` (null: plain).
 */
function oneRoute(
  fast: FastPath,
  self: Buffer,
  dst: Buffer,
  mac: Buffer,
  port: number,
  max: number,
  cipher: HopCipher | null,
): void {
  const id = dst.readUIntBE(0, 6);
  fast.update(
    self.readUIntBE(0, 6),
    [{ mac: mac.readUIntBE(0, 6), dst: id, addr: LO, port, max, cipher }],
    [{ id, addr: LO, cipher }],
    [mac.readUIntBE(0, 6)],
  );
}

describeAsRoot('native addon', () => {
  beforeAll(async () => {
    await must('ip', ['netns', 'add', ns]);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  });
  afterAll(async () => {
    await run('ip', ['netns', 'del', ns]);
  });

  it('is built', () => {
    expect(nativeError()).toBeNull();
  });

  it('UDP: a batch sent with sendmmsg arrives whole, with its source; oversized datagrams are flagged', async () => {
    const got: string[] = [];
    let truncated = 0;
    const rx = new UdpPort({ address: '127.0.0.1', port: 0, netns, rcvbuf: 4 << 20, slots: 32, slotSize: 256 }, (n) => {
      for (let i = 0; i < n; i++) {
        if (rx.truncated(i)) truncated++;
        else got.push(`${rx.received(i).toString()} from ${rx.fromPort(i)}`);
      }
    });
    const tx = new UdpPort({ address: '127.0.0.1', port: 0, netns, slots: 16, slotSize: 2048 }, () => undefined);
    try {
      for (let i = 0; i < 500; i++) tx.queue(Buffer.from(`datagram ${i}`), LO, rx.localPort!);
      tx.queue(Buffer.alloc(1000, 1), LO, rx.localPort!); // larger than rx's 256-byte slots
      tx.flush();
      for (let i = 0; i < 50 && got.length + truncated < 501; i++) await sleep(20);
      expect(got.length).toBe(500);
      expect(got[0]).toBe(`datagram 0 from ${tx.localPort}`);
      expect(got[499]).toBe(`datagram 499 from ${tx.localPort}`);
      expect(truncated).toBe(1);
      expect(tx.stats().txPackets).toBe(501);
      expect(rx.stats().rxPackets).toBe(501);
    } finally {
      rx.close();
      tx.close();
    }
  });

  it('UDP: a train of segments sent as one arrives joined with its segment size (gro) or as datagrams (without)', async () => {
    const train = Buffer.concat([
      Buffer.alloc(1000, 'a'),
      Buffer.alloc(1000, 'b'),
      Buffer.alloc(1000, 'c'),
      Buffer.alloc(300, 'd'),
    ]);
    const open = (gro: boolean, seen: { len: number; seg: number; text: string }[]) => {
      const p: UdpPort = new UdpPort({ address: '127.0.0.1', port: 0, netns, gro, slots: 8, slotSize: 65600 }, (n) => {
        for (let i = 0; i < n; i++)
          seen.push({ len: p.received(i).length, seg: p.segmentSize(i), text: p.received(i).toString('latin1', 0, 1) });
      });
      return p;
    };
    const joined: { len: number; seg: number; text: string }[] = [];
    const apart: { len: number; seg: number; text: string }[] = [];
    const withGro = open(true, joined);
    const withoutGro = open(false, apart);
    const tx = new UdpPort({ address: '127.0.0.1', port: 0, netns, slots: 4, slotSize: 65600 }, () => undefined);
    try {
      expect(tx.features.gso).toBe(true);
      expect(withGro.features.gro).toBe(true);
      for (const port of [withGro.localPort!, withoutGro.localPort!]) {
        train.copy(tx.nextSlot());
        tx.commit(train.length, LO, port, 1000);
      }
      expect(tx.flush()).toBe(2);
      for (let i = 0; i < 50 && (joined.length < 1 || apart.length < 4); i++) await sleep(20);
      expect(joined).toEqual([{ len: 3300, seg: 1000, text: 'a' }]);
      expect(apart).toEqual([
        { len: 1000, seg: 0, text: 'a' },
        { len: 1000, seg: 0, text: 'b' },
        { len: 1000, seg: 0, text: 'c' },
        { len: 300, seg: 0, text: 'd' },
      ]);
    } finally {
      withGro.close();
      withoutGro.close();
      tx.close();
    }
  });

  it('UDP, dual-stack: IPv4 sources read as their address, registered IPv6 ones as their handle, any other IPv6 one as 0; an unknown handle is sent nothing', async () => {
    await must('ip', ['-n', ns, 'addr', 'add', 'fd00:198:18::99/128', 'dev', 'lo', 'nodad']);
    const seen: { text: string; from: number }[] = [];
    const rx: UdpPort = new UdpPort({ port: 0, netns, slots: 8, slotSize: 256 }, (n) => {
      for (let i = 0; i < n; i++) seen.push({ text: rx.received(i).toString(), from: rx.fromAddress(i) });
    });
    const tx = new UdpPort({ port: 0, netns, slots: 8, slotSize: 256 }, () => undefined);
    const stranger = new UdpPort({ address: 'fd00:198:18::99', port: 0, netns }, () => undefined);
    try {
      expect(rx.features.ipv6).toBe(true);
      const loop6 = ipv6Handle('::1');
      expect(loop6).toBeGreaterThan(0);
      expect(loop6).toBeLessThan(1 << 24); // 0.0.0.0/8: never a peer's IPv4 address
      expect(ipv6Handle('0:0::1')).toBe(loop6); // the same address, the same handle
      expect(ipv6Handle('::ffff:127.0.0.1')).toBe(LO);
      expect(() => ipv6Handle('fd00::zz')).toThrow(/not an IPv6 address/);
      tx.queue(Buffer.from('over ipv4'), LO, rx.localPort!);
      tx.queue(Buffer.from('over ipv6'), loop6, rx.localPort!);
      tx.queue(Buffer.from('to nobody'), (1 << 24) - 1, rx.localPort!); // a handle never given out
      expect(tx.flush()).toBe(2);
      expect(tx.stats().lastError).toMatch(/Destination address required/);
      stranger.queue(Buffer.from('from a stranger'), loop6, rx.localPort!);
      expect(stranger.flush()).toBe(1);
      for (let i = 0; i < 50 && seen.length < 3; i++) await sleep(20);
      expect(seen.sort((x, y) => x.text.localeCompare(y.text))).toEqual([
        { text: 'from a stranger', from: 0 },
        { text: 'over ipv4', from: LO },
        { text: 'over ipv6', from: loop6 },
      ]);
      // Released (no hop has the address any more), a handle reads as unknown and sends nothing, and is
      // given to the next address registered.
      releaseIpv6Handle(loop6);
      seen.length = 0;
      tx.queue(Buffer.from('after release'), loop6, rx.localPort!);
      expect(tx.flush()).toBe(0);
      const again = ipv6Handle('fd00:198:18::99');
      expect(again).toBe(loop6); // the freed handle, given to the stranger's address now
      const loopNow = ipv6Handle('::1');
      expect(loopNow).not.toBe(again);
      stranger.queue(Buffer.from('known now'), loopNow, rx.localPort!);
      expect(stranger.flush()).toBe(1);
      for (let i = 0; i < 50 && seen.length < 1; i++) await sleep(20);
      expect(seen).toEqual([{ text: 'known now', from: again }]);
    } finally {
      rx.close();
      tx.close();
      stranger.close();
    }
  });

  it('UDP: binding a port in use fails with the reason; a closed port sends nothing and does not crash', () => {
    const a = new UdpPort({ address: '127.0.0.1', port: 0, netns }, () => undefined);
    try {
      expect(() => new UdpPort({ address: '127.0.0.1', port: a.localPort!, netns }, () => undefined)).toThrow(
        /bind 127\.0\.0\.1:\d+: Address already in use/,
      );
      expect(() => new UdpPort({ address: 'not-an-ip', port: 0, netns }, () => undefined)).toThrow(/not an IP address/);
      expect(() => new UdpPort({ port: 0, netns: '/var/run/netns/does-not-exist' }, () => undefined)).toThrow(
        /No such file/,
      );
    } finally {
      a.close();
    }
    a.close();
    a.queue(Buffer.from('x'), LO, 9);
    expect(a.flush()).toBe(0);
  });

  it('TAP: frames the kernel sends are read in batches; frames written reach the kernel', async () => {
    const frames: Buffer[] = [];
    const tap = new TapPort({ name: 'wtap0', netns, vnetHdr: true, slots: 8 }, (n) => {
      for (let i = 0; i < n; i++) frames.push(Buffer.from(tap.received(i)));
    });
    try {
      await must('ip', ['-n', ns, 'addr', 'add', '10.99.0.1/24', 'dev', 'wtap0']);
      await must('ip', ['-n', ns, 'link', 'set', 'wtap0', 'up']);
      // A datagram to a neighbour makes the kernel ask for it by ARP, out of the TAP.
      await run('ip', [
        'netns',
        'exec',
        ns,
        process.execPath,
        '-e',
        "const d=require('dgram').createSocket('udp4');d.send('x',9,'10.99.0.2',()=>setTimeout(()=>d.close(),300))",
      ]);
      for (let i = 0; i < 50 && !frames.some((f) => f.readUInt16BE(10 + 12) === 0x0806); i++) await sleep(20);
      const arp = frames.find((f) => f.readUInt16BE(10 + 12) === 0x0806);
      expect(arp, 'an ARP request read from the TAP').toBeDefined();
      expect(arp!.subarray(10, 16).toString('hex')).toBe('ffffffffffff');
      // Write an ARP reply for 10.99.0.2 back: the kernel learns the neighbour.
      const reply = Buffer.alloc(10 + 42);
      const mac = Buffer.from('02aabbccddee', 'hex');
      arp!.copy(reply, 10, 10 + 6, 10 + 12); // to the asker
      mac.copy(reply, 16);
      reply.writeUInt16BE(0x0806, 22);
      Buffer.from('0001080006040002', 'hex').copy(reply, 24);
      mac.copy(reply, 32);
      Buffer.from([10, 99, 0, 2]).copy(reply, 38);
      arp!.copy(reply, 42, 10 + 22, 10 + 28); // target: the asker's MAC and address
      arp!.copy(reply, 48, 10 + 28, 10 + 32);
      tap.queue(reply);
      expect(tap.flush()).toBe(1);
      await sleep(100);
      const neigh = await must('ip', ['-n', ns, 'neigh', 'show', '10.99.0.2']);
      expect(neigh).toContain('02:aa:bb:cc:dd:ee');
    } finally {
      tap.close();
    }
    expect((await run('ip', ['-n', ns, 'link', 'show', 'wtap0'])).code).not.toBe(0); // gone with the descriptor
  });

  it('fast path: frames to a known MAC leave as sleeve packets without JavaScript; known messages for us go into the TAP', async () => {
    const self = Buffer.from('020000000001', 'hex');
    const peerId = Buffer.from('020000000002', 'hex');
    const remoteMac = Buffer.from('02aabbccdd01', 'hex');
    const tapFrames: Buffer[] = [];
    const udpForJs: Buffer[] = [];
    const atPeer: Buffer[] = [];
    const tap = new TapPort({ name: 'wtap1', netns, vnetHdr: true, slots: 8 }, (n) => {
      for (let i = 0; i < n; i++) tapFrames.push(Buffer.from(tap.received(i)));
    });
    const udp = new UdpPort({ address: '127.0.0.1', port: 0, netns, gro: true, slots: 8, slotSize: 65600 }, (n) => {
      for (let i = 0; i < n; i++) if (!udp.handled(i)) udpForJs.push(Buffer.from(udp.received(i)));
    });
    const peer = new UdpPort({ address: '127.0.0.1', port: 0, netns, slots: 64, slotSize: 65600 }, (n) => {
      for (let i = 0; i < n; i++) atPeer.push(Buffer.from(peer.received(i)));
    });
    const fast = new FastPath();
    try {
      fast.link(tap, udp);
      const route = (max: number) => oneRoute(fast, self, peerId, remoteMac, peer.localPort!, max, null);
      route(1472);
      const send = await routeToRemote('wtap1', '10.98.0');
      await send(100);
      for (let i = 0; i < 50 && atPeer.length === 0; i++) await sleep(20);
      expect(atPeer.length).toBe(1);
      const d = atPeer[0];
      expect([d[0], d[1]]).toEqual([1, KIND_FRAMES]);
      expect(d.subarray(2, 8).equals(self)).toBe(true);
      const m = decodeMessage(d.subarray(HEADER));
      expect(m.src.equals(self) && m.dst.equals(peerId)).toBe(true);
      expect(m.frames).toHaveLength(1);
      expect(m.frames[0].subarray(10, 16).equals(remoteMac)).toBe(true);
      expect(m.frames[0].length).toBe(10 + 14 + 20 + 8 + 100);
      expect(tapFrames.filter((f) => f.subarray(10, 16).equals(remoteMac))).toHaveLength(0); // JavaScript never saw it

      // A frame larger than the hop's datagrams goes as a train of fragments, which reassemble to the message.
      route(300);
      atPeer.length = 0;
      await send(1000);
      for (let i = 0; i < 50 && atPeer.length < 4; i++) await sleep(20);
      const r = new Reassembler();
      let whole: Buffer | null = null;
      for (const f of atPeer) {
        expect(f[1]).toBe(KIND_FRAGMENT);
        expect(f.length).toBeLessThanOrEqual(300);
        expect(f.readUInt32BE(HEADER) >>> 31).toBe(1); // the fast path's ids, apart from JavaScript's
        whole =
          r.add(
            f.readUInt32BE(HEADER),
            f.readUInt16BE(HEADER + 4),
            f.readUInt16BE(HEADER + 6),
            f.subarray(FRAGMENT_HEADER),
          ) ?? whole;
      }
      expect(whole).not.toBeNull();
      expect(decodeMessage(whole!).frames[0].length).toBe(10 + 14 + 20 + 8 + 1000);
      expect(fast.stats().framesOut).toBe(2);

      // Messages for us: from the known hop with a known source MAC, straight into the TAP; an
      // unknown source MAC, or another destination, is left to JavaScript.
      const tapMac = Buffer.from(
        (await must('ip', ['netns', 'exec', ns, 'cat', '/sys/class/net/wtap1/address'])).trim().replaceAll(':', ''),
        'hex',
      );
      const frame = (src: Buffer) =>
        Buffer.concat([Buffer.alloc(10), tapMac, src, Buffer.from('88b5', 'hex'), Buffer.alloc(46, 1)]);
      const message = (dst: Buffer, src: Buffer) => {
        const body = encodeMessage(peerId, dst, [frame(src)]);
        const out = Buffer.alloc(HEADER + body.length);
        writeHeader(out, KIND_FRAMES, false, peerId);
        body.copy(out, HEADER);
        return out;
      };
      const rxBefore = Number(
        (await must('ip', ['netns', 'exec', ns, 'cat', '/sys/class/net/wtap1/statistics/rx_packets'])).trim(),
      );
      peer.queue(message(self, remoteMac), LO, udp.localPort!);
      peer.queue(message(self, Buffer.from('02aabbccdd99', 'hex')), LO, udp.localPort!);
      peer.queue(message(Buffer.from('020000000003', 'hex'), remoteMac), LO, udp.localPort!);
      peer.flush();
      for (let i = 0; i < 50 && udpForJs.length < 2; i++) await sleep(20);
      await sleep(50);
      expect(udpForJs).toHaveLength(2);
      expect(fast.stats().framesIn).toBe(1);
      const rxAfter = Number(
        (await must('ip', ['netns', 'exec', ns, 'cat', '/sys/class/net/wtap1/statistics/rx_packets'])).trim(),
      );
      expect(rxAfter - rxBefore).toBe(1);

      // Mutated messages (lengths, kinds, addresses cut or garbled): every one is read, and what the
      // fast path says it delivered is what the TAP received.
      const good = message(self, remoteMac);
      const rxPackets = () =>
        must('ip', ['netns', 'exec', ns, 'cat', '/sys/class/net/wtap1/statistics/rx_packets']).then((t) =>
          Number(t.trim()),
        );
      const inBefore = fast.stats().framesIn;
      const tapBefore = await rxPackets();
      const udpBefore = udp.stats().rxPackets;
      for (let i = 0; i < 2000; i++) {
        const b = Buffer.from(good.subarray(0, 1 + Math.floor(Math.random() * good.length)));
        for (let k = 0; k < 1 + (i % 3); k++) b[Math.floor(Math.random() * b.length)] = Math.floor(Math.random() * 256);
        peer.queue(b, LO, udp.localPort!);
        if (i % 50 === 49) {
          peer.flush();
          await sleep(2);
        }
      }
      peer.flush();
      for (let i = 0; i < 100 && udp.stats().rxPackets - udpBefore < 2000; i++) await sleep(20);
      expect(udp.stats().rxPackets - udpBefore).toBe(2000);
      expect((await rxPackets()) - tapBefore).toBe(fast.stats().framesIn - inBefore);
    } finally {
      tap.close();
      udp.close();
      peer.close();
    }
  });

  it('fast path, encrypted hop: frames leave sealed (whole or per fragment) for the reference opener; sealed messages for us open once', async () => {
    const self = Buffer.from('020000000001', 'hex');
    const peerId = Buffer.from('020000000002', 'hex');
    const remoteMac = Buffer.from('02aabbccdd01', 'hex');
    const toPeer = randomBytes(32);
    const fromPeer = randomBytes(32);
    // The peer runs the reference (JavaScript) path.
    const peerOpener = new PacketOpener(toPeer);
    const peerSealer = new PacketSealer(fromPeer);
    const udpForJs: { b: Buffer; opened: boolean }[] = [];
    const atPeer: Buffer[] = [];
    const tap = new TapPort({ name: 'wtap2', netns, vnetHdr: true, slots: 8 }, () => undefined);
    const udp = new UdpPort({ address: '127.0.0.1', port: 0, netns, gro: true, slots: 8, slotSize: 65600 }, (n) => {
      for (let i = 0; i < n; i++)
        if (!udp.handled(i)) udpForJs.push({ b: Buffer.from(udp.received(i)), opened: udp.opened(i) });
    });
    const peer = new UdpPort({ address: '127.0.0.1', port: 0, netns, slots: 64, slotSize: 65600 }, (n) => {
      for (let i = 0; i < n; i++) atPeer.push(Buffer.from(peer.received(i)));
    });
    const fast = new FastPath();
    const cipher = new HopCipher(toPeer, fromPeer);
    const sys = (f: string) =>
      must('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/wtap2/${f}`]).then((t) => t.trim());
    try {
      fast.link(tap, udp);
      const route = (max: number) => oneRoute(fast, self, peerId, remoteMac, peer.localPort!, max, cipher);
      route(1472);
      const send = await routeToRemote('wtap2', '10.97.0');
      await send(100);
      for (let i = 0; i < 50 && atPeer.length === 0; i++) await sleep(20);
      expect(atPeer.length).toBe(1);
      const d = atPeer[0];
      expect([d[0], d[1]]).toEqual([1, KIND_FRAMES | SEALED]);
      expect(d.includes(Buffer.alloc(32, 7))).toBe(false); // the payload is not in clear
      const m = decodeMessage(peerOpener.open(d.subarray(HEADER))!);
      expect(m.src.equals(self) && m.dst.equals(peerId)).toBe(true);
      expect(m.frames[0].length).toBe(10 + 14 + 20 + 8 + 100);
      expect(m.frames[0].includes(Buffer.alloc(100, 7))).toBe(true);

      // Larger than the hop's datagrams: fragments, each sealed with its header authenticated.
      route(300);
      atPeer.length = 0;
      await send(1000);
      for (let i = 0; i < 50 && atPeer.length < 5; i++) await sleep(20);
      const r = new Reassembler();
      let whole: Buffer | null = null;
      for (const f of atPeer) {
        expect(f[1]).toBe(KIND_FRAGMENT | SEALED);
        expect(f.length).toBeLessThanOrEqual(300);
        const chunk = peerOpener.open(f.subarray(FRAGMENT_HEADER), f.subarray(HEADER, FRAGMENT_HEADER));
        expect(chunk).not.toBeNull();
        whole = r.add(f.readUInt32BE(HEADER), f.readUInt16BE(HEADER + 4), f.readUInt16BE(HEADER + 6), chunk!) ?? whole;
      }
      expect(
        decodeMessage(whole!)
          .frames[0].subarray(10 + 14 + 20 + 8)
          .equals(Buffer.alloc(1000, 7)),
      ).toBe(true);
      expect(fast.stats().framesOut).toBe(2);

      // Sealed messages for us: a known source MAC goes straight into the TAP; the same datagram
      // again, a tampered one, and a plain one from this encrypted hop are not delivered.
      const tapMac = Buffer.from((await sys('address')).replaceAll(':', ''), 'hex');
      const frame = (src: Buffer) =>
        Buffer.concat([Buffer.alloc(10), tapMac, src, Buffer.from('88b5', 'hex'), Buffer.alloc(46, 1)]);
      const sealedMessage = (src: Buffer) => {
        const body = peerSealer.seal(encodeMessage(peerId, self, [frame(src)]));
        const out = Buffer.alloc(HEADER + body.length);
        writeHeader(out, KIND_FRAMES, true, peerId);
        body.copy(out, HEADER);
        return out;
      };
      const rxBefore = Number(await sys('statistics/rx_packets'));
      const good = sealedMessage(remoteMac);
      const tampered = sealedMessage(remoteMac);
      tampered[tampered.length - 20] ^= 1;
      const plain = Buffer.alloc(HEADER + 13 + 4 + 70);
      writeHeader(plain, KIND_FRAMES, false, peerId);
      encodeMessage(peerId, self, [frame(remoteMac)]).copy(plain, HEADER);
      for (const b of [good, good, tampered, plain]) peer.queue(b, LO, udp.localPort!);
      peer.flush();
      for (let i = 0; i < 50 && udpForJs.length < 1; i++) await sleep(20);
      await sleep(50);
      expect(fast.stats().framesIn).toBe(1);
      expect(fast.stats().refused).toBe(2);
      expect(Number(await sys('statistics/rx_packets')) - rxBefore).toBe(1);
      // JavaScript gets the plain one as it came (not opened), and the refused ones with version 0.
      const plainForJs = udpForJs.filter((x) => x.b[0] === 1);
      expect(plainForJs).toHaveLength(1);
      expect(plainForJs[0].opened).toBe(false);
      expect(udpForJs.filter((x) => x.b[0] === 0 && x.opened)).toHaveLength(2);

      // An unknown source MAC, or a fragment: opened in place and left to JavaScript, plaintext after the counter.
      udpForJs.length = 0;
      const unknown = sealedMessage(Buffer.from('02aabbccdd99', 'hex'));
      peer.queue(unknown, LO, udp.localPort!);
      const fragHeader = Buffer.alloc(FRAGMENT_HEADER);
      writeHeader(fragHeader, KIND_FRAGMENT, true, peerId);
      fragHeader.writeUInt32BE(77, HEADER);
      fragHeader.writeUInt16BE(0, HEADER + 4);
      fragHeader.writeUInt16BE(2, HEADER + 6);
      const fragment = Buffer.concat([fragHeader, peerSealer.seal(Buffer.alloc(200, 9), fragHeader.subarray(HEADER))]);
      peer.queue(fragment, LO, udp.localPort!);
      peer.flush();
      for (let i = 0; i < 50 && udpForJs.length < 2; i++) await sleep(20);
      expect(udpForJs.map((x) => x.opened)).toEqual([true, true]);
      const opened = udpForJs[0].b;
      const message = decodeMessage(opened.subarray(HEADER + 8, opened.length - 16));
      expect(message.frames[0].subarray(16, 22).toString('hex')).toBe('02aabbccdd99');
      expect(udpForJs[1].b.subarray(FRAGMENT_HEADER + 8, udpForJs[1].b.length - 16).equals(Buffer.alloc(200, 9))).toBe(
        true,
      );
      expect(fast.stats().refused).toBe(2);
    } finally {
      tap.close();
      udp.close();
      peer.close();
    }
  });

  it('opening and closing ports many times leaks no descriptor; closing while datagrams pour in is safe', async () => {
    const before = openFds();
    for (let i = 0; i < 100; i++) {
      const u = new UdpPort({ address: '127.0.0.1', port: 0, netns }, () => undefined);
      const t = new TapPort({ name: 'wtap1', netns, vnetHdr: i % 2 === 0 }, () => undefined);
      u.close();
      t.close();
      u.close(); // twice is fine
    }
    await sleep(50); // libuv closes handles on the next loop turn
    expect(openFds()).toBe(before);
    let seen = 0;
    const rx = new UdpPort({ address: '127.0.0.1', port: 0, netns }, (n) => (seen += n));
    const tx = new UdpPort({ address: '127.0.0.1', port: 0, netns }, () => undefined);
    for (let r = 0; r < 20; r++) {
      for (let i = 0; i < 64; i++) tx.queue(randomBytes(100 + i), LO, rx.localPort!);
      tx.flush();
      if (r === 10) rx.close();
      await sleep(5);
    }
    tx.close();
    expect(seen).toBeGreaterThan(0);
  });
});
