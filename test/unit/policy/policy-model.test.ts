// Security groups without namespaces: the rule table's merge laws and its
// convergence over an in-memory mesh, bad rules refused, the compiled model
// against a reference evaluator written from the semantics (differential), and
// the generated nftables text accepted by `nft -c` for generated policies.
import { afterEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { execFileSync } from 'node:child_process';
import { connectInMemory, type Mesh } from '../../../mesh/index.js';
import { PolicyModel, type Member } from '../../../policy/model.js';
import { RuleError, ruleFromRequest, type Rule, type Selector } from '../../../policy/rules.js';
import { PolicyTable, compareEntries, mergeEntries, entryFromWire, type PolicyEntry } from '../../../policy/table.js';
import { compilePolicy } from '../../../policy/nft.js';
import { ruleset } from '../../../datapath/firewall.js';
import { eventually } from '../../harness/cluster.js';
import { testMesh } from '../../harness/memory-mesh.js';
import { referenceAllows, type RefFlow } from '../../harness/policy-reference.js';
import { isRoot } from '../../harness/root.js';

const meshes: Mesh[] = [];
afterEach(() => {
  for (const m of meshes.splice(0)) m.stop();
});

const GROUPS = ['web', 'db', 'admin'];
const PEERS = ['aa:00:00:00:00:01', 'aa:00:00:00:00:02', 'aa:00:00:00:00:03'];

const selector = (containers: string[]): fc.Arbitrary<Selector> =>
  fc.oneof(
    fc.constantFrom(...GROUPS).map((name): Selector => ({ kind: 'group', name })),
    fc.constantFrom(...containers).map((id): Selector => ({ kind: 'container', id })),
    fc
      .constantFrom(
        '10.32.0.0/29',
        '10.32.0.4/30',
        '10.32.0.2/32',
        '0.0.0.0/0',
        '192.0.2.0/24',
        // IPv6: the containers' own block, one address, everything, and a block outside
        'fd77:6566:7400::/126',
        'fd77:6566:7400::2/128',
        '::/0',
        '2001:db8::/32',
      )
      .map((cidr): Selector => ({ kind: 'cidr', cidr })),
    fc.constant<Selector>({ kind: 'any' }),
  );

const ruleArb = (containers: string[]): fc.Arbitrary<Rule> =>
  fc
    .record({
      id: fc.stringMatching(/^[0-9a-f]{8}$/),
      direction: fc.constantFrom('ingress', 'egress') as fc.Arbitrary<'ingress' | 'egress'>,
      target: fc.oneof(
        fc.constantFrom(...GROUPS).map((name): Selector => ({ kind: 'group', name })),
        fc.constantFrom(...containers).map((id): Selector => ({ kind: 'container', id })),
      ),
      peer: selector(containers),
      proto: fc.constantFrom('tcp', 'udp', 'icmp', 'any') as fc.Arbitrary<Rule['proto']>,
      lo: fc.integer({ min: 1, max: 10 }),
      span: fc.integer({ min: 0, max: 3 }),
      ported: fc.boolean(),
    })
    .map(({ lo, span, ported, ...r }) => ({
      ...r,
      ...(ported && (r.proto === 'tcp' || r.proto === 'udp') ? { ports: [lo, lo + span] as [number, number] } : {}),
    }));

const CONTAINERS = ['netns:c0', 'netns:c1', 'netns:c2', 'netns:c3', 'netns:c4'];
const membersArb: fc.Arbitrary<Member[]> = fc.array(fc.subarray(GROUPS), { minLength: 5, maxLength: 5 }).map((gs) =>
  gs.map((groups, i) => ({
    container: CONTAINERS[i],
    peer: PEERS[i % 3],
    // Dual-stack, but for the last container (IPv4 only)
    addrs: i < 4 ? [`10.32.0.${i + 1}`, `fd77:6566:7400::${i + 1}`] : [`10.32.0.${i + 1}`],
    groups,
  })),
);
const addrArb = fc.constantFrom(
  '10.32.0.1',
  '10.32.0.2',
  '10.32.0.3',
  '10.32.0.4',
  '10.32.0.5',
  '192.0.2.9',
  'fd77:6566:7400::1',
  'fd77:6566:7400::2',
  'fd77:6566:7400::4',
  '2001:db8::9',
);
const flowArb: fc.Arbitrary<RefFlow> = fc
  .record({
    src: addrArb,
    dst: addrArb,
    proto: fc.constantFrom('tcp', 'udp', 'icmp') as fc.Arbitrary<RefFlow['proto']>,
    port: fc.integer({ min: 1, max: 12 }),
  })
  .map((f) => (f.proto === 'icmp' ? { src: f.src, dst: f.dst, proto: f.proto } : f));

describe('policy table CRDT', () => {
  const entryArb: fc.Arbitrary<PolicyEntry> = fc
    .record({
      id: fc.constantFrom('00000001', '00000002', '00000003'),
      version: fc.integer({ min: 1, max: 4 }),
      origin: fc.constantFrom(...PEERS),
      value: fc.option(ruleArb(CONTAINERS), { nil: null }),
    })
    .map((e) => ({ ...e, value: e.value ? { ...e.value, id: e.id } : null }));

  const merge = (...lists: PolicyEntry[][]): PolicyEntry[] => {
    const m = new Map<string, PolicyEntry>();
    for (const l of lists) mergeEntries(m, l);
    return [...m.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  };
  const key = (l: PolicyEntry[]) => JSON.stringify(l);

  it('merge is commutative, associative and idempotent, and the order is total', () => {
    fc.assert(
      fc.property(
        fc.array(entryArb, { maxLength: 8 }),
        fc.array(entryArb, { maxLength: 8 }),
        fc.array(entryArb, { maxLength: 8 }),
        (a, b, c) => {
          expect(key(merge(a, b))).toBe(key(merge(b, a)));
          expect(key(merge(merge(a, b), c))).toBe(key(merge(a, merge(b, c))));
          expect(key(merge(a, a))).toBe(key(merge(a)));
          for (const x of a)
            for (const y of b)
              if (x.id === y.id) expect(Math.sign(compareEntries(x, y)) + Math.sign(compareEntries(y, x))).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('rejects malformed entries from the wire', () => {
    expect(() =>
      entryFromWire([
        '00000001',
        1,
        PEERS[0],
        {
          id: '00000002',
          direction: 'ingress',
          target: { kind: 'group', name: 'web' },
          peer: { kind: 'any' },
          proto: 'tcp',
        },
      ]),
    ).toThrow(/does not match/);
    expect(() => entryFromWire(['00000001', 0, PEERS[0], null])).toThrow(RuleError);
    expect(() => entryFromWire(['00000001', 1, 'nobody', null])).toThrow(/origin/);
    expect(() => entryFromWire(['00000001', 1, PEERS[0], { id: '00000001', direction: 'sideways' }])).toThrow(
      RuleError,
    );
  });

  it('three peers converge on the same rules; a removal anywhere wins over the add it saw', async () => {
    const ms = PEERS.map((_, i) => testMesh(`p${i}`));
    meshes.push(...ms);
    const tables = ms.map((m) => new PolicyTable(m));
    connectInMemory(ms[0], ms[1]);
    connectInMemory(ms[1], ms[2]);
    const r1 = ruleFromRequest('0000000a', { to: 'db', from: 'web', proto: 'tcp', port: '5432' });
    const r2 = ruleFromRequest('0000000b', { to: 'web', from: 'any', proto: 'icmp' });
    tables[0].add(r1);
    tables[2].add(r2);
    await eventually('both rules everywhere', async () => tables.every((t) => t.rules().length === 2), 3000, 10);
    expect(tables[1].remove('0000000a')).toBe(true);
    await eventually(
      'the removal everywhere',
      async () =>
        tables.every(
          (t) =>
            t
              .rules()
              .map((r) => r.id)
              .join() === '0000000b',
        ),
      3000,
      10,
    );
    expect(tables[0].remove('0000000a')).toBe(false);
  });

  it('the anti-entropy digest follows every change, and equals that of a table with the same entries', () => {
    const ms = [testMesh('dg0'), testMesh('dg1')];
    meshes.push(...ms);
    const [t, u] = ms.map((m) => new PolicyTable(m));
    const hex = (x: PolicyTable) => Buffer.from(x.digest()).toString('hex');
    const empty = hex(t);
    t.add(ruleFromRequest('0000000c', { to: 'db', from: 'web', proto: 'tcp', port: '5432' }));
    const one = hex(t);
    expect(one).not.toBe(empty);
    expect(hex(t)).toBe(one); // asked again, nothing changed
    t.remove('0000000c');
    const removed = hex(t);
    expect(removed).not.toBe(one);
    // A change that arrives by gossip changes it too.
    u.onGossip(t.gossip()!.encode());
    expect(hex(u)).toBe(removed);
    u.add(ruleFromRequest('0000000d', { to: 'web', from: 'any', proto: 'icmp' }));
    t.onGossip(u.gossip()!.encode());
    expect(hex(t)).toBe(hex(u));
    expect(hex(t)).not.toBe(removed);
  });
});

describe('rules from requests', () => {
  it('refuses bad rules with a message that says what is wrong', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ to: 'db', from: 'web', proto: 'sctp' }, /unknown protocol "sctp"/],
      [{ to: 'db', from: 'web', proto: 'tcp', port: '70000' }, /outside 1-65535/],
      [{ to: 'db', from: 'web', proto: 'tcp', port: '90-80' }, /reversed/],
      [{ to: 'db', from: '10.0.0.0/33' }, /--from/],
      [{ to: 'db', from: '300.1.2.3' }, /--from/],
      [{ to: 'db', from: 'web', port: '80' }, /--port needs --proto tcp or udp/],
      [{ to: '10.0.0.0/8', from: 'web' }, /--to must be a group or container/],
      [{ to: 'db', from: 'any', egress: true }, /--from of an egress rule must be a group/],
      [{ to: 'Bad Name', from: 'web' }, /neither a group name/],
      [{ from: 'web' }, /--to is required/],
      [{ to: 'db', from: 'fd77::1/64' }, /--from/], // host bits set
      [{ to: 'db', from: 'fd77:::1' }, /--from/],
      [{ to: 'db', from: 'fd77::/129' }, /--from/],
      [{ to: 'fd77::/64', from: 'web' }, /--to must be a group or container/],
    ];
    for (const [req, why] of bad) expect(() => ruleFromRequest('00000001', req)).toThrow(why);
  });

  it('takes IPv6 CIDRs and addresses as peers, in their one form', () => {
    const peer = (from: string) => ruleFromRequest('00000001', { to: 'db', from }).peer;
    expect(peer('FD77:6566:7400:0::/64')).toEqual({ kind: 'cidr', cidr: 'fd77:6566:7400::/64' });
    expect(peer('fd77:6566:7400::5')).toEqual({ kind: 'cidr', cidr: 'fd77:6566:7400::5/128' });
    expect(peer('::/0')).toEqual({ kind: 'cidr', cidr: '::/0' });
  });
});

describe('the compiled rules on both families', () => {
  const members: Member[] = [
    { container: 'netns:db', peer: PEERS[0], addrs: ['10.32.0.1', 'fd77:6566:7400::1'], groups: ['db'] },
    { container: 'netns:web', peer: PEERS[1], addrs: ['10.32.0.2', 'fd77:6566:7400::2'], groups: ['web'] },
  ];
  const rules: Rule[] = [
    {
      id: '00000001',
      direction: 'ingress',
      target: { kind: 'group', name: 'db' },
      peer: { kind: 'group', name: 'web' },
      proto: 'icmp',
    },
    {
      id: '00000002',
      direction: 'ingress',
      target: { kind: 'group', name: 'db' },
      peer: { kind: 'cidr', cidr: '2001:db8::/32' },
      proto: 'any',
    },
  ];
  const model = new PolicyModel(rules, members);

  it('with --ipv6, limits a container by both addresses, with a set of each family per group', () => {
    const c = compilePolicy(model, [members[0]], { ipv6: true });
    const text = c.lines.join('\n');
    expect(text).toContain('ip daddr { 10.32.0.1 } jump');
    expect(text).toContain('ip6 daddr { fd77:6566:7400::1 } jump');
    expect(text).toMatch(/ip saddr @g_\w+ meta l4proto \{ icmp, ipv6-icmp \} counter return/);
    expect(text).toMatch(/ip6 saddr @g6_\w+ meta l4proto \{ icmp, ipv6-icmp \} counter return/);
    expect(text).toContain('ip6 saddr 2001:db8::/32 counter return');
    expect(text).toContain('icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept');
    expect([...c.sets.values()]).toContainEqual(['fd77:6566:7400::2']);
  });

  it('without it, writes IPv4 only (IPv6 never crosses that host): an IPv6 CIDR rule matches nothing', () => {
    const text = compilePolicy(model, [members[0]]).lines.join('\n');
    expect(text).not.toMatch(/ip6|g6_|icmpv6|2001:db8/);
    expect(text).toContain('ip daddr { 10.32.0.1 } jump');
  });

  it('revoked flows: dropped before anything is accepted, and a revoked TCP connection is not picked up again, either way', () => {
    const c = compilePolicy(model, [members[0]], { ipv6: true });
    const text = c.revokedTable.join('\n');
    // A table of its own, whose forward chain runs before weft's (priority filter - 10), on the
    // bridge's traffic only; written again without being deleted (its sets keep what they hold).
    expect(text).toContain('chain forward { type filter hook forward priority filter - 11; policy accept; }');
    expect(text).not.toContain('delete table');
    expect(text).toMatch(/flush chain inet weft_revoked forward\nflush chain inet weft_revoked revoked\n/);
    const forward = text.slice(text.lastIndexOf('chain forward {'));
    expect(forward).toMatch(
      /^chain forward \{\n\s+iifname != "weft" oifname != "weft" accept\n\s+ct mark and 0x100000 == 0x100000 jump revoked\n/,
    );
    // Each family's TCP connection remembered from its packets, and not picked up again either way.
    expect(text).toContain('update @revoked4 { ip saddr . ip daddr . tcp sport . tcp dport }');
    expect(text).toContain('update @revoked6 { ip6 saddr . ip6 daddr . tcp sport . tcp dport }');
    for (const tuple of ['ip saddr . ip daddr . tcp sport . tcp dport', 'ip daddr . ip saddr . tcp dport . tcp sport'])
      expect(forward).toContain(`ct state new tcp flags & (fin | syn | rst | ack) != syn ${tuple} @revoked4`);
    expect(c.skeleton).toContain('revoked6'); // a change of it rewrites
    expect(compilePolicy(model, []).revokedTable).toEqual([]); // nothing limited here: nothing of it
  });

  it('the model judges IPv6 flows by IPv6 CIDRs only', () => {
    const f = (src: string) => model.decide({ src, dst: 'fd77:6566:7400::1', proto: 'tcp', port: 80 }).allowed;
    expect(f('2001:db8::9')).toBe(true);
    expect(f('fd77:6566:7400::2')).toBe(false); // web: icmp only
    expect(model.decide({ src: 'fd77:6566:7400::2', dst: 'fd77:6566:7400::1', proto: 'icmp' }).allowed).toBe(true);
    expect(model.decide({ src: '10.32.0.9', dst: '10.32.0.1', proto: 'tcp', port: 80 }).allowed).toBe(false);
  });
});

describe('the compiled model', () => {
  it('agrees with the reference evaluator on generated policies and flows', () => {
    fc.assert(
      fc.property(
        membersArb,
        fc.array(ruleArb(CONTAINERS), { maxLength: 6 }),
        fc.array(flowArb, { minLength: 1, maxLength: 20 }),
        (members, rules, flows) => {
          const model = new PolicyModel(rules, members);
          for (const f of flows) {
            const d = model.decide(f);
            expect(d.allowed, `${JSON.stringify(f)} ${d.summary}`).toBe(referenceAllows(rules, members, f));
            if (d.allowed) expect(d.summary).toMatch(/^allowed/);
            else expect(d.summary).toMatch(/^denied: (ingress|egress) of /);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it.skipIf(!isRoot)('compiles to nftables text that nft accepts, for generated policies', () => {
    fc.assert(
      fc.property(membersArb, fc.array(ruleArb(CONTAINERS), { minLength: 1, maxLength: 6 }), (members, rules) => {
        const model = new PolicyModel(rules, members);
        const c = compilePolicy(
          model,
          members.filter((m) => m.peer === PEERS[0]),
          { ipv6: true },
        );
        const text = ruleset({
          exposed: [],
          policy: c.hooks.length > 0 ? { lines: c.lines, hooks: c.hooks, revokedTable: c.revokedTable } : undefined,
          host: { dns: { ip: '169.254.83.83', port: 53 }, routerPorts: { tcp: [6783, 6784, 6782], udp: [6783, 6784] } },
          underlay: {
            vxlanPort: 6784,
            sleevePort: 6783,
            vxlan: ['198.18.0.2', 'fd00:198:18::2'],
            sleeve: ['198.18.0.2', '198.18.0.3'],
          },
        });
        // -c: check only; nothing is applied.
        execFileSync('nft', ['-c', '-f', '-'], {
          input: text.replace(/^table inet weft\ndelete table inet weft\n/, ''),
        });
      }),
      { numRuns: 30 },
    );
  });
});
