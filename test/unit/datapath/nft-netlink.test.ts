// The heartbeat counters' netlink answer, parsed (nft-netlink.ts): messages built here as the kernel
// writes them (host byte order for lengths and types, counters in network order). Against the real
// kernel: test/hosts/nft-session.test.ts.
import { describe, expect, it } from 'vitest';
import { countersByComment, generationOf, ruleDumpRequest } from '../../../datapath/nft-netlink.js';

const NESTED = 0x8000;

function attr(type: number, value: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt16LE(4 + value.length, 0);
  head.writeUInt16LE(type, 2);
  const pad = Buffer.alloc((4 - (value.length % 4)) % 4);
  return Buffer.concat([head, value, pad]);
}
const str = (s: string) => Buffer.from(`${s}\0`);
const be64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};
function counter(packets: number): Buffer {
  const data = Buffer.concat([attr(1, be64(packets * 100)), attr(2, be64(packets))]);
  return attr(1 | NESTED, Buffer.concat([attr(1, str('counter')), attr(2 | NESTED, data)]));
}
const other = attr(1 | NESTED, Buffer.concat([attr(1, str('payload')), attr(2 | NESTED, attr(1, Buffer.alloc(4)))]));
function comment(text: string): Buffer {
  const v = str(text);
  return Buffer.concat([Buffer.from([0, v.length]), v]);
}

/** A rule as the kernel dumps it: NFT_MSG_NEWRULE with table, expressions and user data. */
function rule(table: string, exprs: Buffer[] | null, userdata?: Buffer, flags = 0x2 /* NLM_F_MULTI */): Buffer {
  return message((10 << 8) | 6, flags, [
    attr(1, str(table)),
    attr(2, str('in')),
    ...(exprs ? [attr(4 | NESTED, Buffer.concat(exprs))] : []),
    ...(userdata ? [attr(7, userdata)] : []),
  ]);
}

/** A netlink message with an nfgenmsg (netdev) and these attributes. */
function message(type: number, flags: number, attrs: Buffer[]): Buffer {
  const body = Buffer.concat([Buffer.from([5, 0, 0, 0]), ...attrs]);
  const head = Buffer.alloc(16);
  head.writeUInt32LE(16 + body.length, 0);
  head.writeUInt16LE(type, 4);
  head.writeUInt16LE(flags, 6);
  return Buffer.concat([head, body]);
}

describe('nftables rule counters over netlink', () => {
  it('asks for one table of one family, as a dump', () => {
    const r = ruleDumpRequest('netdev', 'weft_hb');
    expect(r.readUInt32LE(0)).toBe(r.length);
    expect(r.readUInt16LE(4)).toBe((10 << 8) | 7); // nftables, GETRULE
    expect(r.readUInt16LE(6)).toBe(0x301); // request, dump
    expect(r[16]).toBe(5); // NFPROTO_NETDEV
    expect(r.readUInt16LE(20)).toBe(12); // the table attribute: header and "weft_hb\0"
    expect(r.readUInt16LE(22)).toBe(1);
    expect(r.subarray(24, 32).toString()).toBe('weft_hb\0');
    expect(r.length).toBe(32);
  });

  it('sums packets by comment over rules and chains; rules without a comment or of another table are left out', () => {
    const answer = Buffer.concat([
      rule('weft_hb', [other, counter(3)], comment('peer-a')),
      rule('weft_hb', [counter(4)], comment('peer-b')),
      rule('weft_hb', [counter(2), other], comment('peer-a')),
      rule('weft_hb', [counter(9)]),
      rule('weft_hb', [other], comment('no-counter')),
      rule('other', [counter(7)], comment('peer-b')),
    ]);
    expect(countersByComment(answer, 'weft_hb')).toEqual(
      new Map([
        ['peer-a', { packets: 5, rules: 2 }],
        ['peer-b', { packets: 4, rules: 1 }],
        ['no-counter', { packets: 0, rules: 1 }],
      ]),
    );
    expect(countersByComment(Buffer.alloc(0), 'weft_hb')).toEqual(new Map());
  });

  it('reads 64-bit counts, a rule without expressions, and a comment without its NUL', () => {
    const unterminated = Buffer.concat([Buffer.from([0, 6]), Buffer.from('peer-c')]);
    const answer = Buffer.concat([
      rule('weft_hb', [counter(2 ** 33 + 5)], comment('peer-a')),
      rule('weft_hb', null, comment('peer-b')),
      rule('weft_hb', [counter(7)], unterminated),
    ]);
    expect(countersByComment(answer, 'weft_hb')).toEqual(
      new Map([
        ['peer-a', { packets: 2 ** 33 + 5, rules: 1 }],
        ['peer-b', { packets: 0, rules: 1 }],
        ['peer-c', { packets: 7, rules: 1 }],
      ]),
    );
  });

  it('reads the ruleset generation, and refuses an answer that is not one or lacks its number', () => {
    const id = Buffer.alloc(4);
    id.writeUInt32BE(0x01020304);
    expect(generationOf(message((10 << 8) | 15, 0, [attr(1, id), attr(2, Buffer.alloc(4))]))).toBe(0x01020304);
    expect(() => generationOf(message((10 << 8) | 6, 0, [attr(1, id)]))).toThrow(/not a generation/);
    expect(() => generationOf(message((10 << 8) | 15, 0, [attr(2, id)]))).toThrow(/without its number/);
    expect(() => generationOf(Buffer.alloc(0))).toThrow(/not a generation/);
  });

  it('refuses an interrupted dump (the flag on a rule or on the end of the dump) and a malformed answer, and says which', () => {
    const done = Buffer.alloc(20);
    done.writeUInt32LE(20, 0);
    done.writeUInt16LE(3, 4); // NLMSG_DONE
    done.writeUInt16LE(0x2 | 0x10, 6);
    expect(() =>
      countersByComment(Buffer.concat([rule('weft_hb', [counter(1)], comment('a')), done]), 'weft_hb'),
    ).toThrow(/ruleset changed during the read/);
    done.writeUInt16LE(0x2, 6);
    expect(countersByComment(Buffer.concat([rule('weft_hb', [counter(1)], comment('a')), done]), 'weft_hb').size).toBe(
      1,
    );
    expect(() => countersByComment(rule('weft_hb', [counter(1)], comment('a'), 0x2 | 0x10), 'weft_hb')).toThrow(
      /ruleset changed during the read/,
    );
    const whole = rule('weft_hb', [counter(1)], comment('a'));
    expect(() => countersByComment(whole.subarray(0, whole.length - 4), 'weft_hb')).toThrow(/runs past the end/);
    const bad = Buffer.from(whole);
    bad.writeUInt16LE(200, 20); // the first attribute claims more than its message
    expect(() => countersByComment(bad, 'weft_hb')).toThrow(/runs past its message/);
  });
});
