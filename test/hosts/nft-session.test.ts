// The router's long-lived nft session against the real nft, in a namespace of its own: counters read
// many times from one process, a table removed underneath shows as an error, and reads go on after; a
// script applied as one line is one transaction.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { must, run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { runPrefix } from '../harness/cluster.js';
import { NftSession, nftObjects } from '../../net/nft-session.js';

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
});
