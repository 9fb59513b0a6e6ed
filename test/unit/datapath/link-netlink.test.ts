// A link's rtnetlink answer, parsed (link-netlink.ts), from bytes built here as the kernel writes
// them. Against the real kernel: test/hosts/netlink-links.test.ts.
import { describe, expect, it } from 'vitest';
import { linkRequest, parseLink } from '../../../datapath/link-netlink.js';

const NESTED = 0x8000;
function attr(type: number, value: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt16LE(4 + value.length, 0);
  head.writeUInt16LE(type, 2);
  return Buffer.concat([head, value, Buffer.alloc((4 - (value.length % 4)) % 4)]);
}
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const str = (s: string) => Buffer.from(`${s}\0`);

function newLink(index: number, flags: number, attrs: Buffer[]): Buffer {
  const info = Buffer.alloc(16);
  info.writeUInt32LE(index, 4);
  info.writeUInt32LE(flags, 8);
  const body = Buffer.concat([info, ...attrs]);
  const head = Buffer.alloc(16);
  head.writeUInt32LE(16 + body.length, 0);
  head.writeUInt16LE(16, 4); // RTM_NEWLINK
  return Buffer.concat([head, body]);
}

describe('links over rtnetlink', () => {
  it('asks for one link by name or index, without statistics', () => {
    const byName = linkRequest('weft');
    expect(byName.readUInt16LE(4)).toBe(18); // RTM_GETLINK
    expect(byName.readUInt16LE(6)).toBe(1); // a request, not a dump
    expect(byName.readUInt32LE(20)).toBe(0); // no index
    expect(byName.subarray(36, 36 + 5).toString()).toBe('weft\0'); // IFLA_IFNAME after the 16-byte ifinfomsg
    const byIndex = linkRequest(7);
    expect(byIndex.readUInt32LE(20)).toBe(7);
    expect(byIndex.readUInt16LE(34)).toBe(29); // only IFLA_EXT_MASK
    expect(byIndex.readUInt32LE(36)).toBe(8); // RTEXT_FILTER_SKIP_STATS
  });

  it('reads a bridge port: index, MTU, MAC, up, master index and port flags', () => {
    const slave = Buffer.concat([attr(8, Buffer.from([0])), attr(32, Buffer.from([1])), attr(33, Buffer.from([1]))]);
    const linkinfo = Buffer.concat([attr(1, str('vxlan')), attr(4, str('bridge')), attr(5 | NESTED, slave)]);
    const answer = newLink(5, 0x1043, [
      attr(3, str('vxlan-weft')),
      attr(4, u32(1450)),
      attr(1, Buffer.from([0x0a, 0xbb, 0, 1, 2, 0xff])),
      attr(10, u32(3)),
      attr(18 | NESTED, linkinfo),
    ]);
    expect(parseLink(answer)).toEqual({
      ifindex: 5,
      mtu: 1450,
      address: '0a:bb:00:01:02:ff',
      up: true,
      isBridge: false,
      masterIndex: 3,
      port: { learning: false, neighSuppress: true, isolated: true },
    });
    const bridge = newLink(3, 0x1002, [attr(18 | NESTED, attr(1, str('bridge')))]);
    expect(parseLink(bridge)).toMatchObject({ ifindex: 3, up: false, isBridge: true, masterIndex: null, port: null });
  });

  it('refuses what is not a link, or runs past its end', () => {
    const answer = newLink(5, 1, [attr(4, u32(1450))]);
    answer.writeUInt16LE(17, 4); // RTM_DELLINK
    expect(() => parseLink(answer)).toThrow(/not a link/);
    expect(() => parseLink(Buffer.alloc(0))).toThrow(/not a link/);
    const cut = newLink(5, 1, [attr(4, u32(1450))]);
    expect(() => parseLink(cut.subarray(0, cut.length - 2))).toThrow(/runs past the end/);
  });
});
