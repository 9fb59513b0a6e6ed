// The bridge guard's text: each port bound to its MAC and addresses of both
// families (with its link-local address from the MAC), checked by `nft -c`
// where the tests run as root; and the link-local address the kernel derives.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import fc from 'fast-check';
import { guardRuleset } from '../../../datapath/port-guard.js';
import { ip6Hex, linkLocalOf } from '../../../net/addr6.js';
import { isRoot } from '../../harness/root.js';

describe('the port guard', () => {
  it("derives a container's link-local address from its MAC as the kernel does (EUI-64)", () => {
    // Read from `ip -6 addr` of an interface with this MAC (addr_gen_mode 0).
    expect(linkLocalOf('fe:5b:7e:3b:6c:f1')).toBe('fe80::fc5b:7eff:fe3b:6cf1');
    expect(linkLocalOf('02:00:00:00:00:01')).toBe('fe80::ff:fe00:1');
    expect(ip6Hex('fd77:6566:7400::1')).toBe('0xfd776566740000000000000000000001');
  });

  it('binds a dual-stack port to its IPv6 addresses, its link-local one, and its advertisements', () => {
    const text = guardRuleset(
      [{ port: 'vw0123456789', mac: '02:00:00:00:00:01', addrs: ['10.32.0.1'], addrs6: ['fd77:6566:7400::1'] }],
      { overlayIpv6: true },
    );
    expect(text).toContain(
      'ip6 saddr != { fd77:6566:7400::1, fe80::ff:fe00:1 } counter drop comment "spoofed IPv6 source"',
    );
    expect(text).toContain('@th,64,128 != { 0xfd776566740000000000000000000001, 0xfe80000000000000000000fffe000001 }');
    expect(text).toContain('@th,208,48 != 0x020000000001');
    expect(text).toMatch(/nd-router-advert, nd-redirect/);
    expect(text).toContain('ether type != { ip, arp, ip6 } counter drop');
    // IPv6 to the host is dropped from every port (a remote container can address this host's MAC too).
    expect(text).toMatch(/\n {4}ether type ip6 counter drop comment "IPv6 to the host"/);
    expect(text).toContain('ip6 length != { 24, 32 } counter drop');
    expect(text).toMatch(/mld-listener-query \} counter drop/);
    expect(text).not.toContain('chain o_vw0123456789'); // not limited on ingress
  });

  it('a port limited on ingress is sent only what is addressed to it, and neighbour discovery', () => {
    const text = guardRuleset(
      [
        {
          port: 'vw0123456789',
          mac: '02:00:00:00:00:01',
          addrs: ['10.32.0.1'],
          addrs6: ['fd77:6566:7400::1'],
          limitedIn: true,
        },
      ],
      { overlayIpv6: true },
    );
    expect(text).toContain('"vw0123456789" : jump o_vw0123456789');
    expect(text).toContain('ether type ip6 ip6 daddr { fd77:6566:7400::1, fe80::ff:fe00:1 } accept');
    expect(text).toContain('ether type ip ip daddr != { 10.32.0.1 } counter drop');
    expect(text).toContain('oifname vmap @out_ports');
  });

  it('drops all IPv6 of a port without IPv6 addresses, and from the overlay without --ipv6', () => {
    const text = guardRuleset([{ port: 'vw0123456789', mac: '02:00:00:00:00:01', addrs: ['10.32.0.1'] }]);
    expect(text).toContain('ether type ip6 counter drop comment "no IPv6 address"');
    expect(text).toContain('ether type != { ip, arp } counter drop');
    expect(text).not.toContain('fe80');
  });

  it.skipIf(!isRoot)('writes text that nft accepts, for generated bindings', () => {
    const mac = fc
      .uint8Array({ minLength: 6, maxLength: 6 })
      .map((b) => [b[0] & 0xfe, ...b.slice(1)].map((x) => x.toString(16).padStart(2, '0')).join(':'));
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            mac,
            v4: fc.subarray(['10.32.0.1', '10.32.0.2']),
            v6: fc.subarray(['fd77:6566:7400::1', 'fd77:6566:7400:8000::']),
            limited: fc.boolean(),
          }),
          { maxLength: 3 },
        ),
        fc.boolean(),
        (ports, ipv6) => {
          const text = guardRuleset(
            ports.map((p, i) => ({
              port: `vw00000000${i}`,
              mac: p.mac,
              addrs: p.v4,
              addrs6: p.v6,
              limitedIn: p.limited,
            })),
            { overlayIpv6: ipv6 },
          );
          execFileSync('nft', ['-c', '-f', '-'], {
            input: text.replace(/^table bridge weft\ndelete table bridge weft\n/, ''),
          });
        },
      ),
      { numRuns: 20 },
    );
  });
});
