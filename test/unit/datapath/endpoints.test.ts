// The endpoint records' wire form with addresses of both families: IPv4 ones are what the datapath,
// the policy and services see; IPv6 ones (which a dual-stack peer will advertise) are kept and passed
// on unchanged, so such a record is neither refused whole nor stripped by a peer that relays it.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { endpointCodec } from '../../../datapath/endpoints.js';

const v4 = fc
  .tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 32 }))
  .map(([x, p]) => `10.32.0.${x}/${p}`);
const v6 = fc
  .tuple(fc.integer({ min: 1, max: 0xffff }), fc.integer({ min: 1, max: 128 }))
  .map(([x, p]) => `fd77:6566:7400::${x.toString(16)}/${p}`);

describe('endpoint records with addresses of both families', () => {
  it("IPv4 addresses are the datapath's, IPv6 ones are kept apart; the wire form and the content key survive a relay in any order", () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.oneof(v4, v6), { maxLength: 20 }), fc.boolean(), (cidrs, grouped) => {
        const wire = ['netns:x', '02:00:00:00:00:01', cidrs, ...(grouped ? [['web']] : [])];
        const e = endpointCodec.fromWire(wire);
        expect(e.cidrs).toEqual(cidrs.filter((c) => !c.includes(':')));
        expect(e.cidrs6 ?? []).toEqual(cidrs.filter((c) => c.includes(':')));
        const again = endpointCodec.fromWire(endpointCodec.toWire(e));
        expect(endpointCodec.key(again)).toBe(endpointCodec.key(e));
        const shuffled = endpointCodec.fromWire([
          'netns:x',
          '02:00:00:00:00:01',
          [...cidrs].reverse(),
          ...(grouped ? [['web']] : []),
        ]);
        expect(endpointCodec.key(shuffled)).toBe(endpointCodec.key(e));
        expect(new Set((endpointCodec.toWire(e) as unknown[][])[2])).toEqual(new Set(cidrs));
      }),
    );
  });

  it('refuses IPv6 addresses not in their one form, and more than 64 addresses of both together', () => {
    for (const bad of ['FD77::1/64', 'fd77:0::1/64', 'fd77::1/129', 'fd77::1', 'fd77::g/64'])
      expect(() => endpointCodec.fromWire(['netns:x', '02:00:00:00:00:01', [bad]]), bad).toThrow(
        /canonical form|malformed/,
      );
    const many = Array.from({ length: 65 }, (_, i) => `fd77::${(i + 1).toString(16)}/64`);
    expect(() => endpointCodec.fromWire(['netns:x', '02:00:00:00:00:01', many])).toThrow(/malformed/);
  });
});
