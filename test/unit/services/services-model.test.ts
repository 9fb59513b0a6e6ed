// Services without namespaces: services checked from the wire, VIPs picked and
// kept apart, two services that picked one VIP while the mesh was apart
// resolved the same way on every peer (one gets a new VIP), the table converging
// over an in-memory mesh, DNS answering with the VIP, and the generated nftables
// text accepted by `nft -c`.
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectInMemory, type Mesh } from '../../../mesh/index.js';
import { parseCidr } from '../../../net/addr.js';
import { ServiceEngine } from '../../../services/engine.js';
import type { Datapath } from '../../../datapath/datapath.js';
import type { Endpoint } from '../../../datapath/endpoints.js';
import { compileServiceTable } from '../../../services/nft.js';
import { StateWrites } from '../../../lib/json-file.js';
import {
  ServiceError,
  checkService,
  parseServiceRange6,
  pickVip,
  resolveVips,
  vip6Of,
  type Service,
} from '../../../services/service.js';
import { parseCidr6 } from '../../../net/addr6.js';
import { NameTable } from '../../../dns/table.js';
import { eventually } from '../../harness/cluster.js';
import { testMesh } from '../../harness/memory-mesh.js';
import { isRoot } from '../../harness/root.js';

const meshes: Mesh[] = [];
const engines: ServiceEngine[] = [];
const dirs: string[] = [];
afterEach(() => {
  for (const e of engines.splice(0)) e.stop();
  for (const m of meshes.splice(0)) m.stop();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function engine(
  nickname: string,
  range = '10.96.0.0/16',
  range6?: string,
  datapath: Datapath | null = null,
): { mesh: Mesh; services: ServiceEngine } {
  const mesh = testMesh(nickname);
  const dir = mkdtempSync(join(tmpdir(), 'weft-svc-'));
  meshes.push(mesh);
  dirs.push(dir);
  const services = new ServiceEngine(
    mesh,
    datapath,
    parseCidr(range),
    { dir, writes: new StateWrites() },
    'weft.local.',
    range6 === undefined ? null : parseServiceRange6(range6, parseCidr(range)),
  );
  services.start();
  engines.push(services);
  return { mesh, services };
}

/** The endpoint table as the engine reads it, set by hand (no kernel: nothing local to program or probe). */
function fakeDatapath() {
  let endpoints: (Endpoint & { peer: string })[] = [];
  const listeners: (() => void)[] = [];
  const datapath = {
    endpoints: { all: () => endpoints, local: [], onChange: (f: () => void) => listeners.push(f) },
    config: {},
  } as unknown as Datapath;
  const set = (list: Omit<Endpoint, 'mac'>[], peer: string) => {
    endpoints = list.map((e, i) => ({ ...e, mac: `02:00:00:00:00:0${i}`, peer }));
    for (const f of listeners) f();
  };
  return { datapath, set };
}

const svc = (over: Partial<Service>): Service => ({
  name: 'web',
  vip: '10.96.0.10',
  group: 'web',
  affinity: 'none',
  created: 1,
  ...over,
});

describe('services', () => {
  it('checks services from the wire and refuses malformed ones with a reason', () => {
    expect(checkService(svc({}))).toEqual(svc({}));
    expect(
      checkService(svc({ group: undefined, backends: ['netns:b1'], check: { proto: 'tcp', port: 80 } })).backends,
    ).toEqual(['netns:b1']);
    expect(() => checkService(svc({ name: 'Web_1' }))).toThrow(/DNS label/);
    expect(() => checkService(svc({ backends: ['x'] }))).toThrow(/either a group or a list/);
    expect(() => checkService(svc({ group: undefined }))).toThrow(/either a group or a list/);
    expect(() => checkService(svc({ vip: '10.96.0.300' }))).toThrow();
    expect(() => checkService({ ...svc({}), affinity: 'sticky' })).toThrow(/affinity/);
    expect(() => checkService({ ...svc({}), check: { proto: 'udp', port: 53 } })).toThrow(/tcp:PORT/);
    expect(() => checkService(svc({}), 'other')).toThrow(/does not match/);
    expect(() => checkService('web')).toThrow(ServiceError);
  });

  it('picks VIPs inside the range, never one taken, the same for the same name, and says when the range is full', () => {
    const range = parseCidr('10.96.0.0/29'); // 6 usable
    const taken = new Set<string>();
    for (let i = 0; i < 6; i++) {
      const vip = pickVip(range, taken, `s${i}`);
      expect(taken.has(vip)).toBe(false);
      expect(['10.96.0.1', '10.96.0.2', '10.96.0.3', '10.96.0.4', '10.96.0.5', '10.96.0.6']).toContain(vip);
      taken.add(vip);
    }
    expect(() => pickVip(range, taken, 'one-more')).toThrow(/full/);
    expect(pickVip(parseCidr('10.96.0.0/16'), new Set(), 'db')).toBe(
      pickVip(parseCidr('10.96.0.0/16'), new Set(), 'db'),
    );
  });

  it('of two services on one VIP the older keeps it, whatever the order', () => {
    const a = svc({ name: 'a', created: 5 });
    const b = svc({ name: 'b', created: 3 });
    for (const list of [
      [a, b],
      [b, a],
    ]) {
      const r = resolveVips(list);
      expect(r.served.map((s) => s.name)).toEqual(['b']);
      expect(r.conflicts).toEqual([{ service: a, takenBy: 'b' }]);
    }
  });

  it('three peers converge; a VIP picked twice while apart ends with one service each, on every peer', async () => {
    const ps = ['p0', 'p1', 'p2'].map((n) => engine(n, '10.96.0.0/30')); // two usable VIPs
    const one = ps[0].services.create({ name: 'one', group: 'g1' });
    const two = ps[2].services.create({ name: 'two', group: 'g2' });
    // With two addresses, picks collide half the time; make sure they do.
    if (one.vip !== two.vip) ps[2].services.table.put('two', { ...two, vip: one.vip, created: one.created + 1 });
    connectInMemory(ps[0].mesh, ps[1].mesh);
    connectInMemory(ps[1].mesh, ps[2].mesh);
    await eventually(
      'both services served on different VIPs everywhere',
      async () => {
        const views = ps.map((p) => p.services.views());
        return (
          views.every((v) => v.length === 2 && v.every((s) => s.served)) &&
          new Set(views[0].map((s) => s.vip)).size === 2 &&
          views.every((v) => JSON.stringify(v) === JSON.stringify(views[0]))
        );
      },
      5000,
      20,
    );
    const final = ps[1].services.views();
    expect(final.find((s) => s.name === 'one')!.vip).toBe(one.vip); // the older kept its address
    expect(ps.reduce((n, p) => n + p.services.stats.vipsRepicked, 0)).toBeGreaterThanOrEqual(1);
    expect(() => ps[1].services.create({ name: 'three', group: 'g3' })).toThrow(/full/);
    expect(() => ps[1].services.create({ name: 'one', group: 'g3' })).toThrow(/exists/);
    expect(ps[1].services.remove('one')?.name).toBe('one');
    await eventually(
      'the removal everywhere',
      async () =>
        ps.every(
          (p) =>
            p.services
              .views()
              .map((s) => s.name)
              .join() === 'two',
        ),
      5000,
      20,
    );
  });

  it('DNS answers NAME.domain with the VIP, before any container of that name, and the VIP back with the name', () => {
    const { services } = engine('p0');
    const s = services.create({ name: 'db', group: 'db' });
    const names = new NameTable(undefined, services);
    expect(names.lookup('db.weft.local')).toEqual([s.vip]);
    expect(names.lookup('DB.weft.local.')).toEqual([s.vip]);
    expect(names.lookup('db.other.domain')).toEqual([]);
    expect(names.reverse(s.vip)).toEqual(['db.weft.local.']);
    services.remove('db');
    expect(names.lookup('db.weft.local')).toEqual([]);
  });

  it('refuses a service range that overlaps the allocation range', () => {
    expect(() => ServiceEngine.checkRanges(parseCidr('10.32.0.0/16'), parseCidr('10.32.0.0/12'))).toThrow(
      /overlaps the allocation range/,
    );
    expect(() => ServiceEngine.checkRanges(parseCidr('10.96.0.0/16'), parseCidr('10.32.0.0/12'))).not.toThrow();
  });

  it.runIf(isRoot)('writes nftables text the kernel accepts: round robin, client affinity, and refusal', () => {
    const text = compileServiceTable('10.96.0.0/16', [
      { name: 'a', vip: '10.96.0.1', affinity: 'none', backends: ['10.32.0.2', '10.32.0.3', '10.32.0.4'] },
      { name: 'b', vip: '10.96.0.2', affinity: 'client', backends: ['10.32.0.5'] },
      { name: 'empty', vip: '10.96.0.3', affinity: 'none', backends: [] },
    ]);
    expect(text).toContain('numgen inc mod 3 map { 0 : 10.32.0.2, 1 : 10.32.0.3, 2 : 10.32.0.4 }');
    expect(text).toContain('jhash ip saddr mod 1');
    expect(text).not.toContain('10.96.0.3 ');
    execFileSync('nft', ['-c', '-f', '-'], { input: text.split('\n').slice(2).join('\n') });
    // No service in the mesh: no table (its NAT chain would turn on conntrack for all the container's traffic).
    expect(compileServiceTable('10.96.0.0/16', [])).toBe(
      'table ip weft_services\ndelete table ip weft_services\ntable ip6 weft_services\ndelete table ip6 weft_services\n',
    );
  });

  it.runIf(isRoot)(
    'a dual-stack container translates the IPv6 VIPs to the backends that have IPv6, in an ip6 table',
    () => {
      const vips = [
        {
          name: 'a',
          vip: '10.96.0.1',
          affinity: 'client' as const,
          backends: ['10.32.0.2', '10.32.0.3'],
          vip6: 'fd77:6566:7401::1',
          backends6: ['fd77:6566:7400::2'],
        },
        {
          name: 'empty',
          vip: '10.96.0.3',
          affinity: 'none' as const,
          backends: [],
          vip6: 'fd77:6566:7401::3',
          backends6: [],
        },
      ];
      const text = compileServiceTable('10.96.0.0/16', vips, 'fd77:6566:7401::/112');
      expect(text).toContain(
        'ip6 daddr fd77:6566:7401::1 counter dnat to jhash ip6 saddr mod 1 seed 0x77656674 map { 0 : fd77:6566:7400::2 }',
      );
      expect(text).toContain('ip6 daddr fd77:6566:7401::/112 counter reject with icmpv6 type addr-unreachable');
      expect(text).not.toContain('fd77:6566:7401::3 ');
      execFileSync('nft', ['-c', '-f', '-'], { input: text.split('\n').slice(2).join('\n') });
      // An IPv4-only container (or router) removes the ip6 table.
      expect(compileServiceTable('10.96.0.0/16', vips)).toMatch(
        /table ip6 weft_services\ndelete table ip6 weft_services\n$/,
      );
    },
  );

  it("with --ipv6, a service has an IPv6 VIP at its IPv4 VIP's offset, answered as AAAA and back", () => {
    const { services } = engine('p6', '10.96.0.0/16', 'fd77:6566:7401::/112');
    const s = services.create({ name: 'db', group: 'db' });
    const v6 = vip6Of(s.vip, parseCidr('10.96.0.0/16'), parseCidr6('fd77:6566:7401::/112'));
    expect(v6).toBe(
      `fd77:6566:7401::${(Number(s.vip.split('.')[2]) * 256 + Number(s.vip.split('.')[3])).toString(16)}`,
    );
    const names = new NameTable(undefined, services);
    expect(names.lookup('db.weft.local', 4)).toEqual([s.vip]);
    expect(names.lookup('db.weft.local', 6)).toEqual([v6]);
    expect(names.reverse(v6)).toEqual(['db.weft.local.']);
    expect(services.views()[0].vip6).toBe(v6);
    // Without --ipv6: no IPv6 VIP, no AAAA.
    const { services: plain } = engine('p4');
    plain.create({ name: 'db', group: 'db' });
    expect(new NameTable(undefined, plain).lookup('db.weft.local', 6)).toEqual([]);
  });

  it('with --ipv6, DNS answers a VIP of each family the backends have: IPv6-only backends no A, IPv4-only ones no AAAA', () => {
    const fake = fakeDatapath();
    const datapath = fake.datapath;
    const { mesh, services } = engine('fam', '10.96.0.0/16', 'fd77:6566:7401::/112', datapath);
    const set = (list: Omit<Endpoint, 'mac'>[]) => fake.set(list, mesh.name);
    const s = services.create({ name: 'db', group: 'db' });
    const v6 = vip6Of(s.vip, parseCidr('10.96.0.0/16'), parseCidr6('fd77:6566:7401::/112'));
    const names = new NameTable(undefined, services);
    const both = () => [names.lookup('db.weft.local', 4), names.lookup('db.weft.local', 6)];
    // No backend yet: both, as without the rule.
    expect(both()).toEqual([[s.vip], [v6]]);
    set([{ container: 'netns:a', cidrs: [], cidrs6: ['fd77:6566:7400::5/48'], groups: ['db'] }]);
    expect(both()).toEqual([[], [v6]]);
    expect(services.views()[0].live).toEqual([
      { container: 'netns:a', peer: mesh.name, addr6: 'fd77:6566:7400::5', health: 'unchecked', health6: 'unchecked' },
    ]);
    set([{ container: 'netns:b', cidrs: ['10.32.0.5/12'], groups: ['db'] }]);
    expect(both()).toEqual([[s.vip], []]);
    set([
      { container: 'netns:a', cidrs: [], cidrs6: ['fd77:6566:7400::5/48'], groups: ['db'] },
      { container: 'netns:b', cidrs: ['10.32.0.5/12'], groups: ['db'] },
    ]);
    expect(both()).toEqual([[s.vip], [v6]]);
    // IPv4 backends first, then the IPv6-only ones.
    expect(services.views()[0].live.map((b) => b.container)).toEqual(['netns:b', 'netns:a']);
  });

  it("a backend's health is its own host's word: another peer's failure record for it counts for nothing", async () => {
    const fake = fakeDatapath();
    const a = engine('ha', '10.96.0.0/16', undefined, fake.datapath);
    const b = engine('hb');
    connectInMemory(a.mesh, b.mesh);
    fake.set([{ container: 'netns:x', cidrs: ['10.32.0.9/12'], groups: ['db'] }], a.mesh.name);
    a.services.create({ name: 'db', group: 'db', check: { proto: 'tcp', port: 80 } });
    b.services.health.setLocal([{ service: 'db', container: 'netns:x' }]);
    b.services.health6.setLocal([{ service: 'db', container: 'netns:x' }]);
    await eventually(
      "b's records reached a",
      async () =>
        a.services.health.all().some((f) => f.peer === b.mesh.name) &&
        a.services.health6.all().some((f) => f.peer === b.mesh.name),
      5000,
      20,
    );
    expect(a.services.views()[0].live[0].health).toBe('healthy');
    a.services.health.setLocal([{ service: 'db', container: 'netns:x' }]);
    expect(a.services.views()[0].live[0].health).toBe('failing');
  });

  it('refuses an IPv6 service range smaller than the IPv4 one, or inside the IPv6 allocation range', () => {
    expect(() => parseServiceRange6('fd77:6566:7401::/120', parseCidr('10.96.0.0/16'))).toThrow(
      /smaller than --service-range 10.96.0.0\/16 \(it needs \/112 or larger/,
    );
    expect(() => parseServiceRange6('fd77::/129', parseCidr('10.96.0.0/16'))).toThrow(/--service-range6/);
    expect(() =>
      ServiceEngine.checkRanges(parseCidr('10.96.0.0/16'), parseCidr('10.32.0.0/12'), {
        service: parseCidr6('fd77:6566:7400:1::/112'),
        alloc: parseCidr6('fd77:6566:7400::/48'),
      }),
    ).toThrow(/overlaps --ipalloc-range6/);
  });
});
