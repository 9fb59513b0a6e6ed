// The firewall's underlay peer sets: one per family, so a peer reached over IPv6 (VXLAN over an IPv6
// underlay) is taken by the IPv6 rule and a stranger at any other IPv6 address is not.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { peerSetUpdates, ruleset, type UnderlayPeers } from '../../../datapath/firewall.js';
import { guardRuleset } from '../../../datapath/port-guard.js';

const isRoot = process.getuid?.() === 0;

const u = (vxlan: string[], sleeve: string[]): UnderlayPeers => ({ vxlanPort: 6784, sleevePort: 6783, vxlan, sleeve });

describe('underlay peer sets', () => {
  it('declares a set of each family with the addresses of that family, and a drop rule of each', () => {
    const text = ruleset({
      exposed: [],
      host: { dns: null, routerPorts: { tcp: [], udp: [] } },
      underlay: u(['198.18.0.2', 'fd00:198:18::2'], ['198.18.0.2']),
    });
    expect(text).toContain('set vxlan_peers { type ipv4_addr; elements = { 198.18.0.2 } }');
    expect(text).toContain('set vxlan_peers6 { type ipv6_addr; elements = { fd00:198:18::2 } }');
    expect(text).toContain('set sleeve_peers6 { type ipv6_addr; }');
    expect(text).toMatch(/udp dport 6784 ip6 saddr != @vxlan_peers6 counter drop/);
    expect(text).toMatch(/udp dport 6783 ip6 saddr != @sleeve_peers6 counter drop/);
  });

  it('updates each family in its own set, and nothing when nothing changed', () => {
    const before = u(['198.18.0.2', 'fd00:198:18::2'], []);
    const after = u(['198.18.0.3', 'fd00:198:18::2', 'fd00:198:18::3'], ['198.18.0.3']);
    expect(peerSetUpdates(before, after).split('\n').filter(Boolean).sort()).toEqual(
      [
        'add element inet weft vxlan_peers { 198.18.0.3 }',
        'delete element inet weft vxlan_peers { 198.18.0.2 }',
        'add element inet weft vxlan_peers6 { fd00:198:18::3 }',
        'add element inet weft sleeve_peers { 198.18.0.3 }',
      ].sort(),
    );
    expect(peerSetUpdates(after, after)).toBe('');
  });

  it.skipIf(!isRoot)('with exposed IPv6 subnets (routed and NAT66) both tables are text nft accepts', () => {
    for (const nat66 of [false, true]) {
      const text = ruleset({
        exposed: ['10.32.0.0/12'],
        exposed6: ['fd77:6566:7400::/64'],
        nat66,
        host: {
          dns: { ip: '169.254.83.83', port: 53, ip6: 'fd77:6566:7453::53' },
          routerPorts: { tcp: [6783, 6784], udp: [6783, 6784] },
        },
        underlay: u(['198.18.0.2', 'fd00:198:18::2'], ['fd00:198:18::2']),
        hostAddrs6: ['fd77:6566:7400::1'],
      });
      // Routed containers reach no peer's router ports; nothing is routed into the overlay but to exposed subnets.
      expect(text).toContain('ip6 daddr @vxlan_peers6 meta l4proto { tcp, udp } th dport { 6783, 6784 } counter drop');
      expect(text).toContain('oifname "weft" ip6 daddr != { fd77:6566:7400::/64 } counter drop');
      expect(text).toContain('ip6 daddr fd77:6566:7453::53 iifname != { "lo", "weft" } counter drop');
      expect(text.includes('masquerade comment "exposed IPv6 subnets')).toBe(nat66);
      expect(text).toContain('counter drop comment "no new connections into exposed IPv6 subnets"');
      execFileSync('nft', ['-c', '-f', '-'], { input: text.replace(/^table inet weft\ndelete table inet weft\n/, '') });
    }
    const guard = guardRuleset([], {
      overlayIpv6: true,
      exposed6: () => ['fd77:6566:7400::/64'],
      hostAddrs6: () => ['fd77:6566:7400::1', 'fd77:6566:7453::53'],
      dns6: 'fd77:6566:7453::53',
      allocRange6: 'fd77:6566:7400::/48',
    });
    // Out of the overlay, or to exposed subnets; not routed into another subnet of the range.
    expect(guard).toContain(
      'ip6 saddr { fd77:6566:7400::/64 } ip6 daddr != fd77:6566:7400::/48 accept comment "IPv6 from exposed subnets, out of the overlay"',
    );
    expect(guard).toContain('ip6 daddr { ff02::1:ff00:0/104, fd77:6566:7400::1, fd77:6566:7453::53 } accept');
    execFileSync('nft', ['-c', '-f', '-'], {
      input: guard.replace(/^table bridge weft\ndelete table bridge weft\n/, ''),
    });
  });
});
