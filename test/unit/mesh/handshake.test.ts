import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../lib/logger.js';
import { AUTH_FAILED_MARKER, encodeHello, newEphemeralKey, HELLO_LENGTH } from '../../../mesh/protocol-crypto.js';
import { PROTOCOL_MAX, PROTOCOL_MIN, randomPeerName, type PeerName } from '../../../mesh/index.js';
import { randomBytes } from 'node:crypto';
import { PENALTY_AFTER } from '../../../mesh/tcp.js';
import { Router } from '../../../router/router.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';
import { eventually, sleep } from '../../harness/cluster.js';

let routers: Router[] = [];
let dirs: string[] = [];
afterEach(async () => {
  for (const r of routers) await r.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  routers = [];
  dirs = [];
});

async function start(
  nickname: string,
  password: string | null,
  peers: string[] = [],
  name?: PeerName,
): Promise<Router> {
  const dataDir = mkdtempSync(join(tmpdir(), 'weft-hs-'));
  dirs.push(dataDir);
  const port = await freePorts(2);
  const r = await Router.start(
    routerOptions({ dataDir, port, nickname, password, peers, ...(name ? { name } : {}) }),
    silentLogger,
  );
  routers.push(r);
  return r;
}

function report(r: Router) {
  return r.report();
}

describe('mesh handshake over TCP', () => {
  it('connects peers with the same password, encrypted', async () => {
    const a = await start('a', 's3cret');
    const b = await start('b', 's3cret', [`127.0.0.1:${a.opts.port}`]);
    await eventually(
      'established both ways',
      async () => a.mesh.connections.get(b.mesh.name)?.established && b.mesh.connections.get(a.mesh.name)?.established,
    );
    const conn = report(b).connections.find((c) => c.peer === a.mesh.name)!;
    expect(conn.state).toBe('established');
    expect(conn.info).toMatch(/encrypted/);
  });

  it('connects over IPv6: listening on ::1, the peer given as [::1]:port, encrypted', async () => {
    const six = async (nickname: string, peers: string[]) => {
      const dataDir = mkdtempSync(join(tmpdir(), 'weft-hs-'));
      dirs.push(dataDir);
      const port = await freePorts(2);
      const r = await Router.start(
        routerOptions({ dataDir, port, nickname, password: 's3cret', peers, host: '::1' }),
        silentLogger,
      );
      routers.push(r);
      return r;
    };
    const a = await six('a', []);
    const b = await six('b', [`[::1]:${a.opts.port}`]);
    await eventually(
      'established both ways',
      async () => a.mesh.connections.get(b.mesh.name)?.established && b.mesh.connections.get(a.mesh.name)?.established,
    );
    const conn = report(b).connections.find((c) => c.peer === a.mesh.name)!;
    expect(conn.address).toBe(`[::1]:${a.opts.port}`);
    expect(conn.info).toMatch(/encrypted/);
  });

  it('rejects a different password at once, with the reason on both sides', async () => {
    const a = await start('a', 'one password');
    const t0 = Date.now();
    const b = await start('b', 'another password', [`127.0.0.1:${a.opts.port}`]);
    const failed = await eventually(
      'b to report the failure',
      async () => report(b).connections.find((c) => c.state === 'failed'),
      5000,
      20,
    );
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(failed.info).toMatch(/authentication failed: the remote uses a different password/);
    await eventually(
      'a to report the failure',
      async () => report(a).connections.find((c) => /different password/.test(c.info)),
      5000,
      20,
    );
    expect(a.mesh.connections.size).toBe(0);
    expect(b.mesh.connections.size).toBe(0);
  });

  it('tells a peer without a password why it is refused', async () => {
    const a = await start('a', 'pw');
    const b = await start('b', null, [`127.0.0.1:${a.opts.port}`]);
    const failed = await eventually(
      'b to report the failure',
      async () => report(b).connections.find((c) => c.state === 'failed'),
      5000,
      20,
    );
    expect(failed.info).toMatch(/the remote requires a password and we have none/);
    await eventually(
      'a to report it',
      async () => report(a).connections.find((c) => /we have a password but the remote has none/.test(c.info)),
      5000,
      20,
    );
  });

  it('refuses an address after repeated failed handshakes, telling a real peer why, for seconds only', async () => {
    const a = await start('a', 'pw');
    const garbage = () =>
      new Promise<Buffer>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: a.opts.port }, () =>
          s.write(Buffer.alloc(HELLO_LENGTH, 0x41)),
        );
        const got: Buffer[] = [];
        s.on('data', (d) => got.push(d));
        s.on('close', () => resolve(Buffer.concat(got)));
        s.on('error', () => resolve(Buffer.concat(got)));
      });
    for (let i = 0; i < PENALTY_AFTER; i++) await garbage();
    // Now 127.0.0.1 is refused: a peer from there learns why at once, without a key exchange.
    const b = await start('b', 'pw', [`127.0.0.1:${a.opts.port}`]);
    const failed = await eventually(
      'b to be told',
      async () =>
        report(b).connections.find((c) => /refuses us for \d+s after repeated failed handshakes/.test(c.info)),
      5000,
      20,
    );
    expect(failed.state).toBe('failed');
    // The refusal lasts seconds, not forever: b gets in once it is over.
    await eventually(
      'b connects after the penalty',
      async () => a.mesh.connections.get(b.mesh.name)?.established,
      20_000,
      100,
    );
  });

  it('survives garbage and oversized frames on its port, and keeps serving', async () => {
    const a = await start('a', null);
    const send = (bytes: Buffer) =>
      new Promise<void>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: a.opts.port }, () => s.write(bytes));
        s.on('data', () => undefined);
        s.on('close', () => resolve());
        s.on('error', () => resolve());
      });
    // Not a weft peer at all.
    await send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.padEnd(HELLO_LENGTH, ' ')));
    // A valid hello, then a frame header announcing 4 GiB.
    const hello = encodeHello({
      min: PROTOCOL_MIN,
      max: PROTOCOL_MAX,
      hasPassword: false,
      publicKey: newEphemeralKey().publicKey,
    });
    await send(Buffer.concat([hello, Buffer.from([0xff, 0xff, 0xff, 0xff])]));
    const reasons = report(a)
      .connections.map((c) => c.info)
      .join('\n');
    expect(reasons).toMatch(/not a weft peer/);
    expect(reasons).toMatch(/exceeds the limit/);
    const b = await start('b', null, [`127.0.0.1:${a.opts.port}`]);
    await eventually('a still accepts real peers', async () => a.mesh.connections.get(b.mesh.name)?.established);
  });

  it('keeps the peer name across restarts and reconnects', async () => {
    const a = await start('a', null);
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-hs-'));
    dirs.push(dataDir);
    const port = await freePorts(2);
    const opts = {
      ...a.opts,
      dataDir,
      nickname: 'b',
      port,
      httpAddr: `127.0.0.1:${port + 1}`,
      peers: [`127.0.0.1:${a.opts.port}`],
    };
    const b1 = await Router.start(opts, silentLogger);
    await eventually('b1 connected', async () => a.mesh.connections.get(b1.mesh.name)?.established);
    const { name, uid } = b1.mesh.config;
    await b1.stop();
    const b2 = await Router.start(opts, silentLogger);
    routers.push(b2);
    expect(b2.mesh.name).toBe(name);
    expect(b2.mesh.config.uid).not.toBe(uid);
    await eventually(
      'b2 connected as the same peer',
      async () => a.mesh.connections.get(name)?.link.remote.uid === b2.mesh.config.uid,
    );
  });
});

describe('mesh admission against strangers and impostors', () => {
  it('a stranger without the password gets a hello and, for a frame that does not open, a refusal marker: nothing sealed to test guesses against', async () => {
    const a = await start('a', 'the real password');
    const probe = (sendFrame: boolean) =>
      new Promise<Buffer>((resolve) => {
        const got: Buffer[] = [];
        const s = net.connect({ host: '127.0.0.1', port: a.opts.port }, () => {
          s.write(
            encodeHello({
              min: PROTOCOL_MIN,
              max: PROTOCOL_MAX,
              hasPassword: true,
              publicKey: newEphemeralKey().publicKey,
            }),
          );
          if (sendFrame) {
            const frame = randomBytes(200); // what a guessed password would seal: it does not open
            const head = Buffer.alloc(4);
            head.writeUInt32BE(frame.length);
            s.write(Buffer.concat([head, frame]));
          }
        });
        s.on('data', (d) => got.push(d));
        s.on('close', () => resolve(Buffer.concat(got)));
        s.on('error', () => resolve(Buffer.concat(got)));
        setTimeout(() => s.destroy(), 1500);
      });
    // Waiting without a frame: only the listener's hello (its ephemeral key, nothing derived from the password).
    expect((await probe(false)).length).toBe(HELLO_LENGTH);
    // A frame that does not open: the hello, then the 4-byte marker, then the connection ends.
    const got = await probe(true);
    expect(got.length).toBe(HELLO_LENGTH + 4);
    expect(got.readUInt32BE(HELLO_LENGTH)).toBe(AUTH_FAILED_MARKER);
  });

  it('a known peer name presented with another key is refused with the reason, until rmpeer forgets the old key', async () => {
    const a = await start('a', 'pw');
    const name = randomPeerName();
    const b1 = await start('b', 'pw', [`127.0.0.1:${a.opts.port}`], name);
    await eventually('b1 connected', async () => a.mesh.connections.get(name)?.established);
    await b1.stop();
    routers = routers.filter((r) => r !== b1);
    await eventually('a no longer sees b', async () => !a.mesh.topology.get(name), 10_000, 100);
    // Another router (another data dir: another key) claims the same name.
    const impostor = await start('impostor', 'pw', [`127.0.0.1:${a.opts.port}`], name);
    await eventually(
      'a to refuse it with the reason',
      async () => report(a).connections.some((c) => /presented another key/.test(c.info)),
      10_000,
      100,
    );
    await eventually(
      'the impostor to be told why',
      async () => report(impostor).connections.some((c) => /presented another key/.test(c.info)),
      10_000,
      100,
    );
    expect(a.mesh.connections.has(name)).toBe(false);
    // Re-installed for real: rmpeer forgets the old key, and the new one is taken.
    const r = await a.removePeer(name);
    expect(r.removed).toContain('pinned key');
    await eventually('the new key accepted', async () => a.mesh.connections.get(name)?.established, 20_000, 100);
  });

  it('a flood of half-open connections from one source does not keep a real peer out', async () => {
    const a = await start('a', null);
    const flood: net.Socket[] = [];
    let flooding = true;
    const open = () => {
      if (!flooding) return;
      // From another loopback address: one source, not the real peer's.
      const s = net.connect({ host: '127.0.0.1', port: a.opts.port, localAddress: '127.0.0.2' });
      s.on('error', () => undefined);
      flood.push(s);
      setTimeout(open, 2);
    };
    open();
    try {
      await sleep(500);
      const b = await start('b', null, [`127.0.0.1:${a.opts.port}`]);
      await eventually(
        'b connects through the flood',
        async () => a.mesh.connections.get(b.mesh.name)?.established,
        10_000,
        50,
      );
      expect(a.transport.stats.overLimit).toBeGreaterThan(50);
    } finally {
      flooding = false;
      for (const s of flood) s.destroy();
    }
  });
});
