// Links read over rtnetlink by the addon (datapath/link-netlink.ts), against what `ip -d -j link`
// says of the same links, in a namespace of its own: a bridge, a port on it with the flags weft sets
// and one without, a link that is down, and one that is not there.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { must, run } from '../harness/exec.js';
import { describeAsRoot } from '../harness/root.js';
import { runPrefix } from '../harness/cluster.js';
import { readLink } from '../../datapath/link-netlink.js';
import { nativeError, netlinkRequest } from '../../native/index.js';
import { readdirSync } from 'node:fs';

const ns = `${runPrefix()}nlk`;
const path = `/run/netns/${ns}`;

interface IpLink {
  ifindex: number;
  mtu: number;
  address: string;
  flags: string[];
  master?: string;
  linkinfo?: {
    info_kind?: string;
    info_slave_data?: { learning?: boolean; neigh_suppress?: boolean; isolated?: boolean };
  };
}

async function ipLink(dev: string): Promise<IpLink> {
  return (JSON.parse(await must('ip', ['-n', ns, '-d', '-j', 'link', 'show', dev])) as IpLink[])[0];
}

describeAsRoot('links over rtnetlink (the addon)', () => {
  beforeAll(async () => {
    await run('ip', ['netns', 'del', ns]);
    await must('ip', ['netns', 'add', ns]);
    await must('ip', ['-n', ns, '-batch', '-'], {
      input: [
        'link add br0 address 02:00:00:00:00:01 mtu 1400 type bridge',
        'link add d0 mtu 1400 type veth peer name d0p',
        'link add d1 type veth peer name d1p',
        'link set d0 master br0',
        'link set dev d0 type bridge_slave learning off neigh_suppress on isolated on',
        'link set br0 up',
        'link set d0 up',
        '',
      ].join('\n'),
    });
  });
  afterAll(async () => {
    await run('ip', ['netns', 'del', ns]);
  });

  it('reads a bridge, its port and another link as ip shows them; a missing link is null', async () => {
    expect(nativeError()).toBeNull();
    const br = readLink('br0', path)!;
    const ipBr = await ipLink('br0');
    expect(br).toEqual({
      ifindex: ipBr.ifindex,
      mtu: 1400,
      address: '02:00:00:00:00:01',
      up: true,
      isBridge: true,
      master: null,
      port: null,
    });
    const d0 = readLink('d0', path)!;
    const ipD0 = await ipLink('d0');
    expect(ipD0.master).toBe('br0');
    expect(d0).toEqual({
      ifindex: ipD0.ifindex,
      mtu: 1400,
      address: ipD0.address,
      up: true,
      isBridge: false,
      master: 'br0',
      port: { learning: false, neighSuppress: true, isolated: true },
    });
    // Another port's flags as the kernel's defaults leave them, and a link that is down and on no bridge.
    await must('ip', ['-n', ns, 'link', 'set', 'd1', 'master', 'br0']);
    expect(readLink('d1', path)?.port).toEqual({ learning: true, neighSuppress: false, isolated: false });
    await must('ip', ['-n', ns, 'link', 'set', 'd1', 'nomaster']);
    const d1 = readLink('d1', path)!;
    expect(d1).toMatchObject({ up: false, master: null, port: null, isBridge: false, mtu: 1500 });
    expect(d1.address).toBe((await ipLink('d1')).address);
    expect(readLink('nothere', path)).toBeNull();
  });

  it('leaves no descriptor open, whatever the answer; a message too short or too long is refused', () => {
    const open = () => readdirSync('/proc/self/fd').length;
    const before = open();
    for (let i = 0; i < 500; i++) {
      expect(readLink('d0', path)?.master).toBe('br0');
      expect(readLink('nothere', path)).toBeNull();
    }
    expect(() => readLink('d0', `${path}-gone`)).toThrow(/No such file or directory/);
    expect(open()).toBe(before);
    expect(() => netlinkRequest(0, Buffer.alloc(8))).toThrow(/16 bytes to 64 KiB/);
    expect(() => netlinkRequest(0, Buffer.alloc(70000))).toThrow(/16 bytes to 64 KiB/);
  });
});
