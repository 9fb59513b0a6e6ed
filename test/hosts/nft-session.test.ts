// The router's long-lived nft session against the real nft, in a namespace of its own: counters read
// many times from one process, a table removed underneath shows as an error, and reads go on after; a
// script applied as one line is one transaction. And the same counters read over netlink by the addon
// (how the VXLAN heartbeats read theirs), which must agree with nft's.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { must, run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { runPrefix } from '../harness/cluster.js';
import { NftSession, nftObjects, type NftJson } from '../../net/nft-session.js';
import { readRuleCounters, rulesetGeneration } from '../../datapath/nft-netlink.js';
import { nativeError } from '../../native/index.js';

const ns = `${runPrefix()}nftr`;
type Rule = { comment?: string; expr: { counter?: { packets: number } }[] };

describeAsRoot('nft session (real nft)', () => {
  beforeAll(async () => {
    await run('ip', ['netns', 'del', ns]);
    await must('ip', ['netns', 'add', ns]);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    await must('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], {
      input:
        'table inet t {\n chain c {\n  type filter hook output priority 0;\n  icmp type echo-request counter comment "pings"\n }\n}\n',
    });
  });
  afterAll(async () => {
    await run('ip', ['netns', 'del', ns]);
  });

  it('reads counters as they move; a missing table is an error, and reading goes on', async () => {
    const r = new NftSession(5000, ['ip', 'netns', 'exec', ns, 'nft']);
    try {
      const pings = async () =>
        nftObjects<Rule>(await r.list('list table inet t'), 'rule')
          .find((x) => x.comment === 'pings')
          ?.expr.find((e) => e.counter)?.counter?.packets;
      expect(await pings()).toBe(0);
      await must('ip', ['netns', 'exec', ns, 'ping', '-c', '3', '-i', '0.2', '-q', '127.0.0.1']);
      expect(await pings()).toBe(3);
      const all = await r.list('list ruleset');
      expect(nftObjects<{ name: string }>(all, 'table', 'inet').map((t) => t.name)).toEqual(['t']);
      await must('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 't']);
      await expect(r.list('list table inet t')).rejects.toThrow(/No such file or directory/);
      expect(nftObjects(await r.list('list ruleset'), 'table')).toHaveLength(0);
    } finally {
      r.end();
    }
  });

  it('applies a script as one transaction: all of it, or on an error none of it', async () => {
    const r = new NftSession(5000, ['ip', 'netns', 'exec', ns, 'nft']);
    try {
      await r.apply(
        'add table bridge g\nadd chain bridge g p_x\nadd rule bridge g p_x ether type arp counter drop comment "x"\n',
      );
      const rules = nftObjects<{ comment?: string }>(await r.list('list table bridge g'), 'rule');
      expect(rules.map((x) => x.comment)).toEqual(['x']);
      // The second command refers to a chain that does not exist: the first is not applied either.
      await expect(r.apply('add chain bridge g p_y\nadd rule bridge g p_missing counter')).rejects.toThrow(
        /No such file or directory/,
      );
      const chains = nftObjects<{ name: string }>(await r.list('list table bridge g'), 'chain').map((c) => c.name);
      expect(chains).toEqual(['p_x']);
    } finally {
      r.end();
    }
  });

  it('reads rule counters over netlink as nft does: by comment, summed, moving with traffic; a missing table has none', async () => {
    expect(nativeError()).toBeNull();
    const path = `/run/netns/${ns}`;
    const script = [
      'table netdev hb {',
      ' chain in {',
      '  type filter hook ingress device "lo" priority -500;',
      '  ip protocol icmp counter comment "icmp"',
      '  ip protocol icmp counter comment "twice"',
      '  ip protocol udp counter comment "udp"',
      '  counter',
      ' }',
      ' chain in2 {',
      '  type filter hook ingress device "lo" priority -400;',
      '  ip protocol icmp counter comment "twice"',
      ' }',
      '}',
      '',
    ].join('\n');
    await must('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: script });
    try {
      expect(readRuleCounters('netdev', 'hb', path)).toEqual(
        new Map([
          ['icmp', { packets: 0, rules: 1 }],
          ['twice', { packets: 0, rules: 2 }],
          ['udp', { packets: 0, rules: 1 }],
        ]),
      );
      // Each ping is a request and a reply on lo: two packets in at its ingress.
      await must('ip', ['netns', 'exec', ns, 'ping', '-c', '3', '-i', '0.2', '-q', '127.0.0.1']);
      const counted = readRuleCounters('netdev', 'hb', path)!;
      expect(counted).toEqual(
        new Map([
          ['icmp', { packets: 6, rules: 1 }],
          ['twice', { packets: 12, rules: 2 }],
          ['udp', { packets: 0, rules: 1 }],
        ]),
      );
      // What nft says of the same rules.
      const r = new NftSession(5000, ['ip', 'netns', 'exec', ns, 'nft']);
      try {
        const viaNft = new Map<string, number>();
        for (const x of nftObjects<Rule>(await r.list('list table netdev hb'), 'rule'))
          if (x.comment)
            viaNft.set(
              x.comment,
              (viaNft.get(x.comment) ?? 0) + (x.expr.find((e) => e.counter)?.counter?.packets ?? 0),
            );
        expect(viaNft).toEqual(new Map([...counted].map(([k, v]) => [k, v.packets])));
      } finally {
        r.end();
      }
      // Another table's rules are not read, nor a table of that name in another family: a dump
      // filtered by table answers a missing one with no rules.
      expect(readRuleCounters('netdev', 't', path)).toEqual(new Map());
      expect(readRuleCounters('inet', 'hb', path)).toEqual(new Map());
    } finally {
      await must('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'netdev', 'hb']);
    }
    expect(readRuleCounters('netdev', 'hb', path)).toEqual(new Map());
    // Asking in a namespace that is not there is an error, not an empty answer.
    expect(() => readRuleCounters('netdev', 'hb', `${path}-gone`)).toThrow(/No such file or directory/);
  });

  it('reads the ruleset generation: steady while nothing changes (listings and counters included), moved by any change', async () => {
    const path = `/run/netns/${ns}`;
    await must('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], {
      input: 'table ip count {\n chain o {\n  type filter hook output priority 0;\n  counter comment "out"\n }\n}\n',
    });
    const counted = async () =>
      nftObjects<Rule>(
        JSON.parse(await must('ip', ['netns', 'exec', ns, 'nft', '-j', 'list', 'table', 'ip', 'count'])) as NftJson,
        'rule',
      )[0].expr.find((e) => e.counter)?.counter?.packets ?? 0;
    const g0 = rulesetGeneration(path)!;
    expect(Number.isInteger(g0)).toBe(true);
    const before = await counted();
    await must('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-q', '127.0.0.1']);
    expect(await counted()).toBeGreaterThan(before); // the counter moved; the generation does not
    await must('ip', ['netns', 'exec', ns, 'nft', 'list', 'ruleset']);
    expect(rulesetGeneration(path)).toBe(g0);
    await must('ip', ['netns', 'exec', ns, 'nft', 'add', 'table', 'ip', 'gen']);
    const g1 = rulesetGeneration(path)!;
    expect(g1).not.toBe(g0);
    await must('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'ip', 'gen']);
    expect(rulesetGeneration(path)).not.toBe(g1);
    await must('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'ip', 'count']);
  });
});
