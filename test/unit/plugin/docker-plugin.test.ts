// The Docker plugin's protocol, without Docker: the IPAM calls against a real
// allocator, the network calls' validation, errors as {"Err"} with HTTP 500 over
// the unix socket, and arbitrary requests that never take the server down.
// (The calls that plumb veths are covered with a real dockerd in docker.test.ts.)
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { formatIp, parseCidr, parseIp } from '../../../net/addr.js';
import { parseCidr6, parseIp6, type Addr6 } from '../../../net/addr6.js';
import { IPV6 } from '../../../net/family.js';
import { Allocator } from '../../../ipam/allocator.js';
import type { Datapath } from '../../../datapath/datapath.js';
import type { Mesh } from '../../../mesh/index.js';
import { DockerDriver, PluginError } from '../../../plugin/docker-driver.js';
import { testMesh } from '../../harness/memory-mesh.js';

const RANGE = parseCidr('10.32.0.0/16');
let dir: string;
let mesh: Mesh;
let ipam: Allocator;
let driver: DockerDriver;
const quiet = { info() {}, warn() {}, error() {}, debug() {} };

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'weft-plugin-'));
  mesh = testMesh('p0');
  ipam = new Allocator(mesh, {
    range: RANGE,
    defaultSubnet: RANGE,
    init: { kind: 'consensus', quorum: 1, peers: 0 },
    timeoutMs: 5000,
    store: null,
  });
  // The network calls that reach the datapath validate their input first; none of these tests gets past that.
  driver = new DockerDriver({
    datapath: { mtu: 1400, config: {} } as unknown as Datapath,
    ipam,
    dataDir: dir,
    log: quiet as never,
    dnsIp: '169.254.83.83',
  });
});

afterEach(async () => {
  await driver.close();
  ipam.stop();
  mesh.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('Docker IPAM driver', () => {
  it('hands out the default subnet once, refuses an overlapping pool with the reason, and takes it back on release', async () => {
    const first = (await driver.handle('IpamDriver.RequestPool', { AddressSpace: 'weft' })) as {
      PoolID: string;
      Pool: string;
    };
    expect(first.Pool).toBe('10.32.0.0/16');
    await expect(driver.handle('IpamDriver.RequestPool', { AddressSpace: 'weft' })).rejects.toThrow(
      /overlaps 10\.32\.0\.0\/16, already used by another weft network/,
    );
    await expect(driver.handle('IpamDriver.RequestPool', { Pool: '10.32.8.0/24' })).rejects.toThrow(/already used/);
    await driver.handle('IpamDriver.ReleasePool', { PoolID: first.PoolID });
    const again = (await driver.handle('IpamDriver.RequestPool', { Pool: '10.32.8.0/24' })) as { Pool: string };
    expect(again.Pool).toBe('10.32.8.0/24');
  });

  it('refuses pools outside the range, IPv6, sub-ranges outside the subnet, and malformed subnets', async () => {
    await expect(driver.handle('IpamDriver.RequestPool', { Pool: '192.168.0.0/24' })).rejects.toThrow(
      /outside weft's allocation range 10\.32\.0\.0\/16/,
    );
    await expect(driver.handle('IpamDriver.RequestPool', { V6: true })).rejects.toThrow(/IPv6/);
    await expect(
      driver.handle('IpamDriver.RequestPool', { Pool: '10.32.1.0/24', SubPool: '10.32.2.0/25' }),
    ).rejects.toThrow(/not inside --subnet/);
    await expect(driver.handle('IpamDriver.RequestPool', { Pool: '10.32.1.0/33' })).rejects.toThrow(/--subnet/);
    expect(driver.calls.get('IpamDriver.RequestPool')).toBe(4);
  });

  it('with --ipv6, serves IPv6 pools from the IPv6 range: the default subnet6, a gateway not handed out, claims and frees', async () => {
    const ipam6 = new Allocator<Addr6>(mesh, {
      family: IPV6,
      channel: 'ipam6',
      range: parseCidr6('fd77:6566:7400::/48'),
      defaultSubnet: parseCidr6('fd77:6566:7400::/64'),
      init: { kind: 'consensus', quorum: 1, peers: 0 },
      timeoutMs: 5000,
      store: null,
    });
    const d6 = new DockerDriver({
      datapath: { mtu: 1400, config: { ipam6 } } as unknown as Datapath,
      ipam,
      dataDir: dir,
      log: quiet as never,
    });
    try {
      const p = (await d6.handle('IpamDriver.RequestPool', { AddressSpace: 'weft', V6: true })) as {
        PoolID: string;
        Pool: string;
      };
      expect(p.Pool).toBe('fd77:6566:7400::/64');
      // An IPv4 pool alongside it is no clash; a second IPv6 one over it is.
      const p4 = (await d6.handle('IpamDriver.RequestPool', { AddressSpace: 'weft' })) as { PoolID: string };
      await expect(d6.handle('IpamDriver.RequestPool', { V6: true, Pool: 'fd77:6566:7400::/96' })).rejects.toThrow(
        /overlaps fd77:6566:7400::\/64, already used/,
      );
      await expect(d6.handle('IpamDriver.RequestPool', { V6: true, Pool: 'fd00::/64' })).rejects.toThrow(
        /outside weft's IPv6 allocation range/,
      );
      const gw = (await d6.handle('IpamDriver.RequestAddress', {
        PoolID: p.PoolID,
        Options: { RequestAddressType: 'com.docker.network.gateway' },
      })) as { Address: string };
      expect(gw.Address).toBe('fd77:6566:7400::/64');
      const a = (await d6.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID })) as { Address: string };
      expect(a.Address).toMatch(/^fd77:6566:7400::[0-9a-f]+\/64$/);
      expect(ipam6.holderOf(parseIp6(a.Address.split('/')[0]))).toMatch(/^dockernet:/);
      const c = (await d6.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID, Address: 'fd77:6566:7400::77' })) as {
        Address: string;
      };
      expect(c.Address).toBe('fd77:6566:7400::77/64');
      await expect(
        d6.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID, Address: 'fd77:6566:7401::1' }),
      ).rejects.toThrow(/not in the network's IPv6 subnet/);
      await d6.handle('IpamDriver.ReleaseAddress', { PoolID: p.PoolID, Address: 'fd77:6566:7400::77/64' });
      expect(ipam6.holderOf(parseIp6('fd77:6566:7400::77'))).toBeUndefined();
      // The subnet's own address stands for the gateway: not handed out, even when asked for.
      await expect(
        d6.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID, Address: 'fd77:6566:7400::' }),
      ).rejects.toThrow(/the subnet's own address/);
      // A release frees only what the driver handed out: never an address weft attach gave a container.
      await ipam6.claim('netns:other', parseIp6('fd77:6566:7400::99'), parseCidr6('fd77:6566:7400::/64'));
      await d6.handle('IpamDriver.ReleaseAddress', { PoolID: p.PoolID, Address: 'fd77:6566:7400::99/64' });
      expect(ipam6.holderOf(parseIp6('fd77:6566:7400::99'))).toBe('netns:other');
      // An endpoint is made only with addresses the driver handed out (not another container's).
      await expect(
        d6.handle('NetworkDriver.CreateEndpoint', {
          NetworkID: 'n',
          EndpointID: 'a'.repeat(64),
          Interface: { Address: '10.32.0.9/16', AddressIPv6: 'fd77:6566:7400::1/64' },
        }),
      ).rejects.toThrow(/Interface.Address 10.32.0.9\/16 was not handed out by weft's IPAM driver/);
      const v4 = (await d6.handle('IpamDriver.RequestAddress', { PoolID: p4.PoolID })) as { Address: string };
      await expect(
        d6.handle('NetworkDriver.CreateEndpoint', {
          NetworkID: 'n',
          EndpointID: 'a'.repeat(64),
          Interface: { Address: v4.Address, AddressIPv6: 'fd77:6566:7400::99/64' },
        }),
      ).rejects.toThrow(/Interface.AddressIPv6 fd77:6566:7400::99\/64 was not handed out/);
      await expect(
        d6.handle('IpamDriver.RequestPool', {
          V6: true,
          Pool: 'fd77:6566:7400:1::/64',
          SubPool: 'fd77:6566:7400:1::/127',
        }),
      ).rejects.toThrow(/too small/);
      // A network with an IPv6 subnet weft handed out is taken; one outside its range is not.
      expect(
        await d6.handle('NetworkDriver.CreateNetwork', {
          NetworkID: 'n',
          IPv4Data: [{ Pool: '10.32.0.0/16', AddressSpace: 'weft' }],
          IPv6Data: [{ Pool: 'fd77:6566:7400::/64', AddressSpace: 'weft' }],
        }),
      ).toEqual({});
      await expect(
        d6.handle('NetworkDriver.CreateNetwork', {
          NetworkID: 'n',
          IPv4Data: [{ Pool: '10.32.0.0/16', AddressSpace: 'weft' }],
          IPv6Data: [{ Pool: 'fd00::/64', AddressSpace: 'weft' }],
        }),
      ).rejects.toThrow(/IPv6 subnet fd00::\/64 is not one weft handed out/);
      // Restarted without --ipv6, the router still frees what Docker got while it was on.
      const without = new DockerDriver({
        datapath: { mtu: 1400, config: {} } as unknown as Datapath,
        ipam,
        ipam6,
        dataDir: dir,
        log: quiet as never,
      });
      await without.handle('IpamDriver.ReleaseAddress', { PoolID: p.PoolID, Address: a.Address });
      expect(ipam6.holderOf(parseIp6(a.Address.split('/')[0]))).toBeUndefined();
      await expect(
        without.handle('IpamDriver.RequestPool', { V6: true, Pool: 'fd77:6566:7400:2::/64' }),
      ).rejects.toThrow(/runs without --ipv6/);
    } finally {
      ipam6.stop();
    }
  });

  it('gives the gateway without allocating, allocates from the sub-range, claims a given address, frees by address', async () => {
    const p = (await driver.handle('IpamDriver.RequestPool', { Pool: '10.32.4.0/24', SubPool: '10.32.4.128/25' })) as {
      PoolID: string;
    };
    const gw = (await driver.handle('IpamDriver.RequestAddress', {
      PoolID: p.PoolID,
      Options: { RequestAddressType: 'com.docker.network.gateway' },
    })) as { Address: string };
    expect(gw.Address).toBe('10.32.4.0/24');
    expect(ipam.holderOf(parseIp('10.32.4.0'))).toBeUndefined();
    const a = (await driver.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID })) as { Address: string };
    const b = (await driver.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID })) as { Address: string };
    expect(a.Address).not.toBe(b.Address);
    for (const x of [a, b]) {
      const ip = parseIp(x.Address.split('/')[0]);
      expect(x.Address.endsWith('/24')).toBe(true);
      expect(ip >= parseIp('10.32.4.128') && ip <= parseIp('10.32.4.255')).toBe(true);
      expect(ipam.holderOf(ip)).toMatch(/^dockernet:/);
    }
    const c = (await driver.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID, Address: '10.32.4.7' })) as {
      Address: string;
    };
    expect(c.Address).toBe('10.32.4.7/24');
    await expect(
      driver.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID, Address: '10.32.4.7' }),
    ).rejects.toThrow(/already allocated/);
    await expect(
      driver.handle('IpamDriver.RequestAddress', { PoolID: p.PoolID, Address: '10.32.9.1' }),
    ).rejects.toThrow(/not in the network's subnet/);
    await driver.handle('IpamDriver.ReleaseAddress', { PoolID: p.PoolID, Address: '10.32.4.7' });
    expect(ipam.holderOf(parseIp('10.32.4.7'))).toBeUndefined();
    // Releasing twice, or the gateway, is fine.
    await driver.handle('IpamDriver.ReleaseAddress', { PoolID: p.PoolID, Address: '10.32.4.7' });
    await driver.handle('IpamDriver.ReleaseAddress', { PoolID: p.PoolID, Address: '10.32.4.0' });
    await expect(driver.handle('IpamDriver.RequestAddress', { PoolID: 'nope' })).rejects.toThrow(/unknown pool/);
    expect(formatIp(parseIp(a.Address.split('/')[0]))).toMatch(/^10\.32\.4\./);
  });
});

describe('Docker network driver', () => {
  it('activates as both drivers, local scope', async () => {
    expect(await driver.handle('Plugin.Activate', {})).toEqual({ Implements: ['NetworkDriver', 'IpamDriver'] });
    expect(await driver.handle('NetworkDriver.GetCapabilities', {})).toMatchObject({ Scope: 'local' });
  });

  it('refuses networks without weft IPAM, and endpoints with bad ids, before touching anything', async () => {
    await expect(
      driver.handle('NetworkDriver.CreateNetwork', {
        NetworkID: 'n',
        IPv4Data: [{ AddressSpace: 'LocalDefault', Pool: '172.18.0.0/16' }],
      }),
    ).rejects.toThrow(/--ipam-driver weft/);
    await expect(driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n', IPv4Data: [] })).rejects.toThrow(
      /no IPv4 subnet/,
    );
    expect(
      await driver.handle('NetworkDriver.CreateNetwork', {
        NetworkID: 'n',
        IPv4Data: [{ AddressSpace: 'weft', Pool: '10.32.0.0/16' }],
      }),
    ).toEqual({});
    await expect(
      driver.handle('NetworkDriver.CreateEndpoint', {
        EndpointID: '../../etc',
        Interface: { Address: '10.32.0.5/16' },
      }),
    ).rejects.toThrow(/not a Docker endpoint id/);
    await expect(driver.handle('NetworkDriver.Join', { EndpointID: 42 })).rejects.toThrow(PluginError);
    await expect(driver.handle('NetworkDriver.Frobnicate', {})).rejects.toThrow(
      /does not implement NetworkDriver\.Frobnicate/,
    );
  });
});

function post(socket: string, path: string, body: string): Promise<{ status: number; type: string; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath: socket,
        method: 'POST',
        path,
        headers: { 'content-type': 'application/vnd.docker.plugins.v1.2+json' },
      },
      (res) => {
        let text = '';
        res.on('data', (c) => (text += String(c)));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), json: JSON.parse(text) }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('the plugin socket', () => {
  it('answers over HTTP on a unix socket: results with 200, errors as {"Err"} with 500', async () => {
    const sock = join(dir, 'weft.sock');
    await driver.listen(sock);
    const ok = await post(sock, '/Plugin.Activate', '');
    expect(ok.status).toBe(200);
    expect(ok.type).toMatch(/vnd\.docker\.plugins/);
    const bad = await post(sock, '/IpamDriver.RequestPool', '{"Pool": "8.8.8.0/24"}');
    expect(bad.status).toBe(500);
    expect((bad.json as { Err: string }).Err).toMatch(/outside weft's allocation range/);
    const garbage = await post(sock, '/IpamDriver.RequestPool', '{not json');
    expect((garbage.json as { Err: string }).Err).toMatch(/not JSON/);
  });

  it('survives arbitrary methods and bodies: every request gets a JSON answer and the server keeps serving', async () => {
    const sock = join(dir, 'weft.sock');
    await driver.listen(sock);
    const methods = [
      'Plugin.Activate',
      'NetworkDriver.CreateNetwork',
      'NetworkDriver.CreateEndpoint',
      'NetworkDriver.Join',
      'NetworkDriver.DeleteEndpoint',
      'IpamDriver.RequestPool',
      'IpamDriver.RequestAddress',
      'IpamDriver.ReleaseAddress',
      'IpamDriver.ReleasePool',
      'Nope',
    ];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...methods),
        fc.oneof(
          fc.json(),
          fc.string(),
          fc.object().map((o) => JSON.stringify(o)),
        ),
        async (m, body) => {
          const r = await post(sock, `/${m}`, body);
          expect([200, 500]).toContain(r.status);
          if (r.status === 500) expect(typeof (r.json as { Err: unknown }).Err).toBe('string');
        },
      ),
      { numRuns: 300 },
    );
    expect((await post(sock, '/Plugin.Activate', '')).status).toBe(200);
  });
});
