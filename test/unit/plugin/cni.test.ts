// The router's side of the CNI plugin without a datapath: config checks, result shapes per version,
// and the spec's error codes.
import { describe, expect, it } from 'vitest';
import { CniService, cniContainerKey, cniResult, parseNetConf, CniError } from '../../../plugin/cni.js';
import type { NameService } from '../../../dns/table.js';

const facts = {
  ifname: 'eth0',
  netns: '/run/netns/p',
  mac: '02:00:00:00:00:01',
  mtu: 1410,
  hostIf: 'vethwepl1',
  hostMac: '02:00:00:00:00:02',
  cidrs: ['10.32.0.5/12'],
  gateway: '10.32.0.1',
  dns: { nameserver: '169.254.83.83', domain: 'weft.local' },
};

function codeOf(f: () => unknown): number {
  try {
    f();
  } catch (err) {
    if (err instanceof CniError) return err.code;
    throw err;
  }
  return 0;
}

describe('CNI config and results', () => {
  it('checks the config with the spec codes: 6 not JSON, 7 wrong types or no version, 1 unknown version', () => {
    expect(codeOf(() => parseNetConf('{'))).toBe(6);
    expect(codeOf(() => parseNetConf('[1]'))).toBe(6);
    expect(codeOf(() => parseNetConf('{"name":"weft"}'))).toBe(7);
    expect(codeOf(() => parseNetConf('{"cniVersion":"1.0.0","gateway":"yes"}'))).toBe(7);
    expect(codeOf(() => parseNetConf('{"cniVersion":"1.0.0","groups":[1]}'))).toBe(7);
    expect(codeOf(() => parseNetConf('{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"id":1}]}'))).toBe(7);
    expect(codeOf(() => parseNetConf('{"cniVersion":"0.2.0"}'))).toBe(1);
    expect(parseNetConf('{"cniVersion":"0.3.1","subnet":"10.40.0.0/16"}')).toMatchObject({
      cniVersion: '0.3.1',
      subnet: '10.40.0.0/16',
      gateway: true,
    });
    expect(parseNetConf('{"cniVersion":"1.0.0","gateway":false}').gateway).toBe(false);
    // The pods' families, as Kubernetes names them.
    expect(parseNetConf('{"cniVersion":"1.0.0","ipFamilies":["IPv6"]}').ipFamilies).toEqual(['IPv6']);
    for (const bad of ['"IPv6"', '[]', '["IPv6","IPv6"]', '["ipv6"]', '["IPv4","IPv6","IPv4"]'])
      expect(codeOf(() => parseNetConf(`{"cniVersion":"1.0.0","ipFamilies":${bad}}`))).toBe(7);
  });

  it('shapes the result for the version: 0.3.x and 0.4.0 name the IP version, 1.x does not; both list the host side', () => {
    const legacy = cniResult('0.3.1', facts) as { ips: { version?: string }[]; interfaces: unknown[] };
    expect(legacy.ips[0].version).toBe('4');
    expect(legacy.interfaces).toEqual([
      { name: 'vethwepl1', mac: '02:00:00:00:00:02' },
      { name: 'eth0', mac: '02:00:00:00:00:01', mtu: 1410, sandbox: '/run/netns/p' },
    ]);
    expect(cniResult('1.1.0', facts)).toEqual({
      cniVersion: '1.1.0',
      interfaces: legacy.interfaces,
      ips: [{ address: '10.32.0.5/12', gateway: '10.32.0.1', interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: '10.32.0.1' }],
      dns: { nameservers: ['169.254.83.83'], domain: 'weft.local', search: ['weft.local'] },
    });
    const { gateway: _gw, ...noGateway } = facts;
    expect(cniResult('1.0.0', noGateway)).toMatchObject({
      routes: [],
      ips: [{ address: '10.32.0.5/12', interface: 1 }],
    });
    // Dual-stack (a router run with --ipv6): the IPv6 address after the IPv4 one (no IPv6 gateway given).
    const dual = { ...facts, cidrs6: ['fd77:6566:7400::5/48'] };
    expect((cniResult('1.1.0', dual) as { ips: unknown[] }).ips).toEqual([
      { address: '10.32.0.5/12', gateway: '10.32.0.1', interface: 1 },
      { address: 'fd77:6566:7400::5/48', interface: 1 },
    ]);
    expect((cniResult('0.4.0', dual) as { ips: { version?: string }[] }).ips.map((i) => i.version)).toEqual(['4', '6']);
    // With the host's IPv6 address in the subnet as the IPv6 gateway: a default route of each family.
    const gw6 = cniResult('1.1.0', { ...dual, gateway6: 'fd77:6566:7400::1' }) as { ips: unknown[]; routes: unknown[] };
    expect(gw6.ips).toEqual([
      { address: '10.32.0.5/12', gateway: '10.32.0.1', interface: 1 },
      { address: 'fd77:6566:7400::5/48', gateway: 'fd77:6566:7400::1', interface: 1 },
    ]);
    expect(gw6.routes).toEqual([
      { dst: '0.0.0.0/0', gw: '10.32.0.1' },
      { dst: '::/0', gw: 'fd77:6566:7400::1' },
    ]);
    // An IPv6-only pod: its one address, route and nameserver are IPv6.
    const only6 = cniResult('1.1.0', {
      ...facts,
      cidrs: [],
      gateway: undefined,
      cidrs6: ['fd77:6566:7400::5/48'],
      gateway6: 'fd77:6566:7400::1',
      dns: { nameserver6: 'fd77:6566:7453::53', domain: 'weft.local' },
    }) as { ips: unknown[]; routes: unknown[]; dns: unknown };
    expect(only6.ips).toEqual([{ address: 'fd77:6566:7400::5/48', gateway: 'fd77:6566:7400::1', interface: 1 }]);
    expect(only6.routes).toEqual([{ dst: '::/0', gw: 'fd77:6566:7400::1' }]);
    expect(only6.dns).toEqual({ nameservers: ['fd77:6566:7453::53'], domain: 'weft.local', search: ['weft.local'] });
  });

  it('names containers stably, hashing ids that are no safe name', () => {
    expect(cniContainerKey('abc123')).toBe('cni:abc123');
    const odd = cniContainerKey('a/b c');
    expect(odd).toMatch(/^cni:[0-9a-f]{32}$/);
    expect(cniContainerKey('a/b c')).toBe(odd);
  });
});

describe('CNI requests on a router without a datapath', () => {
  const service = new CniService({
    datapath: null,
    names: {} as NameService,
    dns: null,
    ipamState: () => 'ready',
  });
  const config = '{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}';

  it('answers VERSION with the version asked in, and refuses unknown commands with code 4', async () => {
    expect(await service.handle({ command: 'VERSION', config: '{"cniVersion":"0.4.0"}' })).toEqual({
      ok: true,
      output: JSON.stringify({ cniVersion: '0.4.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] }),
    });
    const bad = await service.handle({ command: 'FROB', config });
    expect(bad.ok).toBe(false);
    expect(JSON.parse(bad.output)).toMatchObject({ code: 4 });
  });

  it('a subnet of a family the pods do not have is refused at ADD (7), and DEL still goes through', async () => {
    const mismatched =
      '{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","ipFamilies":["IPv6"],"subnet":"10.40.0.0/16"}';
    const add = await service.handle({
      command: 'ADD',
      config: mismatched,
      containerId: 'x',
      netns: '/',
      ifname: 'eth0',
    });
    expect(add.ok).toBe(false);
    expect(JSON.parse(add.output)).toMatchObject({
      code: 7,
      msg: expect.stringMatching(/IPv4, and the pods are IPv6 only/),
    });
    expect((await service.handle({ command: 'DEL', config: mismatched, containerId: 'x' })).ok).toBe(true);
  });

  it('STATUS says not available (50); ADD says why; DEL succeeds with nothing to delete', async () => {
    expect(JSON.parse((await service.handle({ command: 'STATUS', config })).output)).toMatchObject({
      cniVersion: '1.0.0',
      code: 50,
    });
    const add = await service.handle({ command: 'ADD', config, containerId: 'x', netns: '/', ifname: 'eth0' });
    expect(JSON.parse(add.output)).toMatchObject({ code: 50, msg: expect.stringMatching(/without a datapath/) });
    expect(await service.handle({ command: 'DEL', config, containerId: 'x' })).toEqual({ ok: true, output: '' });
    const missing = await service.handle({ command: 'DEL', config });
    expect(JSON.parse(missing.output)).toMatchObject({ code: 4, msg: 'CNI_CONTAINERID not set' });
    // An interface name is put in ip commands: a line break (another command) is refused before anything runs.
    const sneaky = await service.handle({
      command: 'ADD',
      config,
      containerId: 'x',
      netns: '/',
      ifname: 'eth0\nlink del weft',
    });
    expect(JSON.parse(sneaky.output)).toMatchObject({ code: 4, msg: expect.stringMatching(/CNI_IFNAME/) });
    const groups = await service.handle({
      command: 'ADD',
      config: '{"cniVersion":"1.0.0","groups":["Web Servers"]}',
      containerId: 'x',
      netns: '/',
      ifname: 'eth0',
    });
    expect(JSON.parse(groups.output)).toMatchObject({ code: 7 });
  });
});
