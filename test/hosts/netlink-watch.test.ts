// The kernel's change notifications through the addon (watchNetlink; datapath/kernel-check.ts runs
// the datapath's check on them), in a namespace of its own: links and IPv6 addresses made or changed
// and nftables changes are heard, listings and other namespaces are not; with table names, only
// changes to those tables; an overrun is heard as one and the watch goes on; a closed watch hears
// nothing more and leaves no descriptor.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { must, run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { runPrefix } from '../harness/cluster.js';
import { nativeError, watchNetlink, type NetlinkWatch, type WatchOptions } from '../../native/index.js';
import { NETLINK_NETFILTER, NETLINK_ROUTE } from '../../net/netlink.js';
import { readdirSync } from 'node:fs';

const ns = `${runPrefix()}nlw`;
const path = `/run/netns/${ns}`;
const RTNLGRP_LINK = 1;
const RTNLGRP_IPV6_IFADDR = 9;
const NFNLGRP_NFTABLES = 7;

/** A watch in the test's namespace and what it heard; `settle()` waits long enough for a notification to come. */
function watch(protocol: number, groups: number[], options: WatchOptions = {}) {
  const heard: boolean[] = [];
  const w = watchNetlink(protocol, groups, (overrun) => heard.push(overrun), { netns: path, ...options });
  if (!w) throw new Error('no watchNetlink in the addon');
  return { w, heard, settle: () => new Promise((r) => setTimeout(r, 300)) };
}

const nft = (script: string) => must('ip', ['netns', 'exec', ns, 'nft', script]);

describeAsRoot('kernel change notifications (the addon)', () => {
  beforeAll(async () => {
    expect(nativeError()).toBeNull();
    await run('ip', ['netns', 'del', ns]);
    await must('ip', ['netns', 'add', ns]);
  });
  afterAll(async () => {
    await run('ip', ['netns', 'del', ns]);
  });

  it("hears links and IPv6 addresses made and changed in the namespace it watches, and not another namespace's", async () => {
    const { w, heard, settle } = watch(NETLINK_ROUTE, [RTNLGRP_LINK, RTNLGRP_IPV6_IFADDR]);
    try {
      await must('ip', ['netns', 'exec', ns, 'true']);
      await settle();
      expect(heard).toEqual([]);
      await must('ip', ['-n', ns, 'link', 'add', 'br0', 'type', 'bridge']);
      await settle();
      expect(heard.length).toBeGreaterThan(0);
      expect(heard.every((overrun) => !overrun)).toBe(true);
      await must('ip', ['-n', ns, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd0p']);
      await must('ip', ['-n', ns, 'link', 'set', 'd0', 'master', 'br0']);
      await settle();
      // A bridge port's flag, the kind of change the check puts back.
      let before = heard.length;
      await must('ip', ['netns', 'exec', ns, 'bridge', 'link', 'set', 'dev', 'd0', 'learning', 'off']);
      await settle();
      expect(heard.length).toBeGreaterThan(before);
      // An IPv6 address (a link-local one on the bridge is what the check removes).
      before = heard.length;
      await must('ip', ['-n', ns, '-6', 'addr', 'add', 'fd00:198:18::1/64', 'dev', 'br0', 'nodad']);
      await settle();
      expect(heard.length).toBeGreaterThan(before);
      // Not this namespace's: nothing.
      const other = `${ns}x`;
      const now = heard.length;
      try {
        await must('ip', ['netns', 'add', other]);
        await must('ip', ['-n', other, 'link', 'add', 'br9', 'type', 'bridge']);
        await settle();
      } finally {
        await run('ip', ['netns', 'del', other]);
      }
      expect(heard.length).toBe(now);
      expect(w.stats()).toMatchObject({ overruns: 0, ignored: 0, failed: false, lastError: null });
      expect(w.stats().messages).toBeGreaterThanOrEqual(heard.length);
    } finally {
      w.close();
    }
  });

  it('hears nftables changes and not listings; with table names, only changes to those; after close, nothing', async () => {
    const all = watch(NETLINK_NETFILTER, [NFNLGRP_NFTABLES]);
    const named = watch(NETLINK_NETFILTER, [NFNLGRP_NFTABLES], { nftTables: ['weft', 'filter'] });
    try {
      await nft('add table inet other; add chain inet other c; add rule inet other c counter');
      await all.settle();
      const made = all.heard.length;
      expect(made).toBeGreaterThan(0);
      // Another table's change (Docker's, kube-proxy's): not for the named watch.
      expect(named.heard).toEqual([]);
      await nft('add table inet weft; add chain inet weft c; add rule inet weft c counter');
      await all.settle();
      expect(named.heard.length).toBeGreaterThan(0);
      const namedMade = named.heard.length;
      const afterWeft = all.heard.length;
      expect(afterWeft).toBeGreaterThan(made);
      // Listings change nothing: not heard.
      await nft('list ruleset');
      await all.settle();
      expect(all.heard.length).toBe(afterWeft);
      expect(named.heard.length).toBe(namedMade);
      // A flush removes every table, weft's among them: heard by both.
      await nft('flush ruleset');
      await all.settle();
      expect(all.heard.length).toBeGreaterThan(afterWeft);
      expect(named.heard.length).toBeGreaterThan(namedMade);
      // The host's FORWARD chain lives in `ip filter`.
      const beforeFilter = named.heard.length;
      await nft('add table ip filter');
      await all.settle();
      expect(named.heard.length).toBeGreaterThan(beforeFilter);
      all.w.close();
      all.w.close(); // twice: nothing more
      const closed = all.heard.length;
      await nft('add table inet t2');
      await all.settle();
      expect(all.heard.length).toBe(closed);
      await nft('flush ruleset');
    } finally {
      all.w.close();
      named.w.close();
    }
  });

  it('hears an overrun (messages lost while the router was busy) as a change, and goes on hearing', async () => {
    // A named watch: what it missed cannot be known, so a lost message must count.
    const { w, heard, settle } = watch(NETLINK_NETFILTER, [NFNLGRP_NFTABLES], { nftTables: ['weft'] });
    try {
      // Thousands of changes to another table while this process's loop is blocked (execFileSync):
      // more messages than the socket holds (each chain made, then removed with its table).
      const flood = [
        'add table inet flood',
        ...Array.from({ length: 4000 }, (_, i) => `add chain inet flood c${i}`),
        'delete table inet flood',
      ];
      // Until the socket overran (its buffer is 1-2 MiB: a few floods), at most ten.
      for (let i = 0; i < 10 && w.stats().overruns === 0; i++) {
        for (let k = 0; k < 3; k++)
          execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: flood.join('\n') });
        await settle();
      }
      expect(w.stats().overruns).toBeGreaterThan(0);
      expect(heard).toContain(true);
      expect(w.stats()).toMatchObject({ failed: false, lastError: null });
      const now = heard.length;
      await nft('add table inet weft');
      await settle();
      expect(heard.length).toBeGreaterThan(now);
      await nft('flush ruleset');
    } finally {
      w.close();
    }
  });

  it('may be closed from its own callback; a callback that throws does not stop it', async () => {
    let calls = 0;
    const w: NetlinkWatch = watchNetlink(
      NETLINK_ROUTE,
      [RTNLGRP_LINK],
      () => {
        calls++;
        w.close();
      },
      { netns: path },
    )!;
    await must('ip', ['-n', ns, 'link', 'add', 'c0', 'type', 'veth', 'peer', 'name', 'c0p']);
    await new Promise((r) => setTimeout(r, 300));
    await must('ip', ['-n', ns, 'link', 'del', 'c0']);
    await new Promise((r) => setTimeout(r, 300));
    expect(calls).toBe(1);

    let thrown = 0;
    const t = watchNetlink(
      NETLINK_ROUTE,
      [RTNLGRP_LINK],
      () => {
        thrown++;
        throw new Error('oops');
      },
      { netns: path },
    )!;
    try {
      await must('ip', ['-n', ns, 'link', 'add', 'c1', 'type', 'veth', 'peer', 'name', 'c1p']);
      await new Promise((r) => setTimeout(r, 300));
      const first = thrown;
      expect(first).toBeGreaterThan(0);
      expect(t.stats().lastError).toMatch(/callback threw: oops/);
      expect(t.stats().failed).toBe(false);
      await must('ip', ['-n', ns, 'link', 'del', 'c1']);
      await new Promise((r) => setTimeout(r, 300));
      expect(thrown).toBeGreaterThan(first);
    } finally {
      t.close();
    }
  });

  it('leaves no descriptor open; a bad group or namespace is refused with the reason', () => {
    const open = () => readdirSync('/proc/self/fd').length;
    const before = open();
    for (let i = 0; i < 200; i++)
      watchNetlink(NETLINK_ROUTE, [RTNLGRP_LINK], () => undefined, { netns: path })!.close();
    expect(() => watchNetlink(NETLINK_ROUTE, [0], () => undefined, { netns: path })).toThrow(/from 1 to 1024/);
    // A group the kernel refuses: the socket made, then closed.
    expect(() => watchNetlink(NETLINK_ROUTE, [1000], () => undefined, { netns: path })).toThrow(/netlink group 1000/);
    expect(() => watchNetlink(NETLINK_ROUTE, [RTNLGRP_LINK], () => undefined, { netns: `${path}-gone` })).toThrow(
      /No such file or directory/,
    );
    expect(open()).toBe(before);
  });
});
