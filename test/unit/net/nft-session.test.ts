// The long-lived nft session's protocol, against a stand-in for `nft -j -t -i` (no root needed): answers
// in order, errors, scripts sent as one line, a hung or dead nft, and a new process after one.
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NftSession, nftObjects } from '../../../net/nft-session.js';

const dir = mkdtempSync(join(tmpdir(), 'weft-nft-'));
const fake = join(dir, 'nft');
// Answers `list table T` with one JSON line naming T and its process id; `list table missing` with
// nft's error (on standard error); `list table hang` never; `list table die` by exiting; `list tables`
// (the session's end mark) with a JSON line of its own. Lines starting `add` are written to a file;
// `add bad` fails after a warning; `list table twice` answers twice (out of step). Checks it was started
// -j -t -i.
const applied = join(dir, 'applied');
writeFileSync(
  fake,
  `#!/bin/sh
[ "$*" = "-j -t -i" ] || { echo "Error: started as $*" >&2; exit 2; }
while read -r cmd; do
  case "$cmd" in
    "list tables") printf '{"nftables": [{"metainfo": {"json_schema_version": 1}}]}\\n' ;;
    "add bad"*) printf 'Warning: a warning is no failure\\nError: syntax error, unexpected bad\\n%s\\n    ^^^\\n' "$cmd" >&2 ;;
    "add "*) echo "$cmd" >> ${applied} ;;
    "list table missing") printf 'Error: No such file or directory\\nlist table missing\\n           ^^^^^^^\\n' >&2 ;;
    "list table hang") sleep 30 ;;
    "list table die") exit 3 ;;
    "list table twice") printf '{"nftables": [{"table": {"name": "twice"}}, {"chain": {}}]}\n{"nftables": [{"table": {"name": "twice"}}, {"chain": {}}]}\n' ;;
    "list table "*) printf '{"nftables": [{"table": {"family": "inet", "name": "%s", "pid": %s}}, {"rule": {"family": "inet", "table": "%s", "comment": "c"}}]}\\n' "\${cmd#list table }" $$ "\${cmd#list table }" ;;
  esac
done
`,
);
chmodSync(fake, 0o755);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pidOf = (j: { nftables: Record<string, unknown>[] }) => nftObjects<{ pid: number }>(j, 'table')[0].pid;

describe('NftSession', () => {
  it('answers many reads, in order, from one process', async () => {
    const r = new NftSession(2000, [fake]);
    try {
      const answers = await Promise.all(['a', 'b', 'c', 'd'].map((t) => r.list(`list table ${t}`)));
      expect(answers.map((j) => nftObjects<{ name: string }>(j, 'table')[0].name)).toEqual(['a', 'b', 'c', 'd']);
      expect(new Set(answers.map(pidOf)).size).toBe(1);
      expect(nftObjects(answers[0], 'rule', 'inet', 'a')).toHaveLength(1);
      expect(nftObjects(answers[0], 'rule', 'inet', 'b')).toHaveLength(0);
    } finally {
      r.end();
    }
  });

  it("an error fails that read only, with nft's message; the process carries on", async () => {
    const r = new NftSession(2000, [fake]);
    try {
      const first = await r.list('list table a');
      await expect(r.list('list table missing')).rejects.toThrow(/list table missing: No such file or directory/);
      const after = await r.list('list table b');
      expect(pidOf(after)).toBe(pidOf(first));
    } finally {
      r.end();
    }
  });

  it('a hung nft fails the read after the timeout, a dead one at once; the next read starts a new process', async () => {
    const r = new NftSession(300, [fake]);
    try {
      const first = await r.list('list table a');
      await expect(r.list('list table hang')).rejects.toThrow(/no answer in 0.3 s/);
      const second = await r.list('list table a');
      expect(pidOf(second)).not.toBe(pidOf(first));
      await expect(r.list('list table die')).rejects.toThrow(/nft ended \(exit code 3\)/);
      expect(pidOf(await r.list('list table a'))).not.toBe(pidOf(second));
    } finally {
      r.end();
    }
  });

  it('an answer where the end mark belongs fails that read and restarts nft, so later answers are not shifted', async () => {
    const r = new NftSession(2000, [fake]);
    try {
      const first = await r.list('list table a');
      await expect(r.list('list table twice')).rejects.toThrow(/out of step/);
      const after = await r.list('list table b');
      expect(nftObjects<{ name: string }>(after, 'table')[0].name).toBe('b');
      expect(pidOf(after)).not.toBe(pidOf(first));
    } finally {
      r.end();
    }
  });

  it('list takes only a list command (nothing else reaches nft that way)', async () => {
    const r = new NftSession(300, [fake]);
    await expect(r.list('flush ruleset')).rejects.toThrow(/not an nft list command/);
    await expect(r.list('list table a\nflush ruleset')).rejects.toThrow(/not an nft list command/);
    r.end();
  });

  it('applies a script as one line (one transaction); a failure is its own, and reads go on', async () => {
    rmSync(applied, { force: true });
    const r = new NftSession(2000, [fake]);
    try {
      const before = await r.list('list table a');
      await r.apply('add table inet t\n  add chain inet t c\n\nadd rule inet t c counter\n');
      expect(readFileSync(applied, 'utf8')).toBe('add table inet t ; add chain inet t c ; add rule inet t c counter\n');
      await expect(r.apply('add bad thing')).rejects.toThrow(/add bad thing: syntax error, unexpected bad/);
      // The answers stay paired with their requests after a failure.
      const after = await Promise.all([r.list('list table b'), r.apply('add table inet u'), r.list('list table c')]);
      expect(after.map((j) => (j ? nftObjects<{ name: string }>(j, 'table')[0].name : null))).toEqual(['b', null, 'c']);
      expect(pidOf(after[2]!)).toBe(pidOf(before));
      // On one line, a comment would hide what follows it: refused.
      await expect(r.apply('add table inet v # why\nadd chain inet v c')).rejects.toThrow(/comment/);
      expect(readFileSync(applied, 'utf8')).not.toContain('inet v');
    } finally {
      r.end();
    }
  });

  it('a missing nft says which package has it', async () => {
    const r = new NftSession(300, [join(dir, 'no-such-nft')]);
    await expect(r.list('list ruleset')).rejects.toThrow(/install nftables/);
    r.end();
  });
});
