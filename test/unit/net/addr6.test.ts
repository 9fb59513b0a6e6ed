// IPv6 addresses: every spelling RFC 4291 allows reads as the same number, and
// each number is written in one form, RFC 5952's, which is also the form the
// WHATWG URL parser (in Node) writes, and the form `ip` prints.
import { isIPv6 } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  cidr6End,
  contains6,
  formatIp6,
  hostRange6,
  isIpv6,
  overlaps6,
  parseCidr6,
  parseIp6,
} from '../../../net/addr6.js';

// Addresses with runs of zero groups, which is where the spellings differ.
const arbGroup = fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff }));
const arbAddr = fc
  .array(arbGroup, { minLength: 8, maxLength: 8 })
  .map((gs) => gs.reduce((a, g) => (a << 16n) | BigInt(g), 0n));
const groupsOf = (a: bigint) => Array.from({ length: 8 }, (_, i) => Number((a >> BigInt(112 - 16 * i)) & 0xffffn));

describe('IPv6 addresses', () => {
  it("format as RFC 5952 says, the same as Node's URL parser, and read back to the same number", () => {
    fc.assert(
      fc.property(arbAddr, (a) => {
        const text = formatIp6(a);
        expect(text).toBe(
          new URL(
            `http://[${groupsOf(a)
              .map((g) => g.toString(16))
              .join(':')}]/`,
          ).hostname.slice(1, -1),
        );
        expect(parseIp6(text)).toBe(a);
      }),
      { numRuns: 2000 },
    );
    expect(formatIp6(0n)).toBe('::');
    expect(formatIp6(1n)).toBe('::1');
    expect(formatIp6(parseIp6('fd77:6566:7400:0:0:0:0:1'))).toBe('fd77:6566:7400::1');
    expect(formatIp6(parseIp6('1:0:0:2:0:0:0:3'))).toBe('1:0:0:2::3'); // the longer run
    expect(formatIp6(parseIp6('1:0:0:2:0:0:3:4'))).toBe('1::2:0:0:3:4'); // the first of equal runs
    expect(formatIp6(parseIp6('1:0:2:3:4:5:6:7'))).toBe('1:0:2:3:4:5:6:7'); // one zero group stays
  });

  it('every spelling of an address reads as that address: full, upper case, leading zeros, "::" anywhere, a dotted quad at the end', () => {
    fc.assert(
      fc.property(arbAddr, fc.boolean(), fc.boolean(), fc.nat(7), (a, upper, padded, at) => {
        const g = groupsOf(a).map((x) => x.toString(16).padStart(padded ? 4 : 1, '0'));
        const spell = (s: string) => (upper ? s.toUpperCase() : s);
        expect(parseIp6(spell(g.join(':')))).toBe(a);
        // "::" for any run of zero groups that starts at `at`.
        let end = at;
        while (end < 8 && g[end].replace(/^0+/, '') === '') end++;
        if (end > at) expect(parseIp6(spell(`${g.slice(0, at).join(':')}::${g.slice(end).join(':')}`))).toBe(a);
        const v4 = groupsOf(a)
          .slice(6)
          .flatMap((x) => [x >> 8, x & 255])
          .join('.');
        expect(parseIp6(spell(`${g.slice(0, 6).join(':')}:${v4}`))).toBe(a);
      }),
      { numRuns: 1000 },
    );
  });

  it("takes what Node's isIPv6 takes, and nothing else (zones aside)", () => {
    const arbText = fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF:.'.split('')), maxLength: 45 });
    const near = arbAddr.chain((a) =>
      fc
        .tuple(fc.constant(formatIp6(a)), fc.nat(45), fc.constantFrom(':', '.', '0', 'f', '', '::', 'g'))
        .map(([t, i, c]) => t.slice(0, i) + c + t.slice(i + (c === '' ? 1 : 0))),
    );
    fc.assert(
      fc.property(fc.oneof(arbText, near), (t) => {
        expect(isIpv6(t)).toBe(isIPv6(t));
      }),
      { numRuns: 5000 },
    );
    for (const bad of [
      '',
      ':',
      ':::',
      '1:::2',
      '1::2::3',
      '12345::',
      '::g',
      '1:2:3:4:5:6:7:8:9',
      ':1:2:3:4:5:6:7',
      '::1.2.3.04',
      '::1.2.3.256',
      'fe80::1%eth0',
      '1.2.3.4',
    ])
      expect(isIpv6(bad), bad).toBe(false);
  });

  it('CIDR blocks: host bits, prefix bounds, containment and overlap as their address sets say', () => {
    expect(parseCidr6('fd77:6566:7400::/48')).toMatchObject({ prefix: 48, start: parseIp6('fd77:6566:7400::') });
    expect(() => parseCidr6('fd77:6566:7400::1/48')).toThrow(/host bits set \(did you mean fd77:6566:7400::\/48\?\)/);
    expect(parseCidr6('fd77:6566:7400::1/48', true).addr).toBe(parseIp6('fd77:6566:7400::1'));
    for (const bad of ['::/129', '::/', '::/-1', '::/048', '::', 'fd00::/1/2'])
      expect(() => parseCidr6(bad), bad).toThrow();
    expect(cidr6End(parseCidr6('::/0'))).toBe(1n << 128n);
    expect(hostRange6(parseCidr6('fd00::/64'))).toEqual([parseIp6('fd00::1'), parseIp6('fd00:0:0:1::')]);
    expect(hostRange6(parseCidr6('fd00::/127'))).toEqual([parseIp6('fd00::'), parseIp6('fd00::2')]);
    const arbCidr = fc
      .tuple(arbAddr, fc.integer({ min: 116, max: 128 }))
      .map(([a, p]) => parseCidr6(`${formatIp6(a & ~((1n << BigInt(128 - p)) - 1n) & ((1n << 128n) - 1n))}/${p}`));
    // Small blocks near one another (the same /116), compared with their address sets.
    const near = fc.tuple(
      fc.integer({ min: 0, max: 4095 }),
      fc.integer({ min: 116, max: 128 }),
      fc.integer({ min: 0, max: 4095 }),
      fc.integer({ min: 116, max: 128 }),
    );
    fc.assert(
      fc.property(near, ([x, p, y, q]) => {
        const mk = (v: number, pr: number) => parseCidr6(`fd00::${(v & ~((1 << (128 - pr)) - 1)).toString(16)}/${pr}`);
        const a = mk(x, p);
        const b = mk(y, q);
        const set = (c: { start: bigint; prefix: number }) =>
          new Set(Array.from({ length: 2 ** (128 - c.prefix) }, (_, i) => c.start + BigInt(i)));
        const sa = set(a);
        const sb = set(b);
        expect(overlaps6(a, b)).toBe([...sa].some((v) => sb.has(v)));
        expect(contains6(a, b)).toBe([...sb].every((v) => sa.has(v)));
      }),
    );
    fc.assert(
      fc.property(arbCidr, (c) => {
        expect(parseCidr6(`${formatIp6(c.start)}/${c.prefix}`)).toEqual(c);
      }),
    );
  });
});
