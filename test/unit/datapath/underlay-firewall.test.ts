// The firewall's underlay peer sets: one per family, so a peer reached over IPv6 (VXLAN over an IPv6
// underlay) is taken by the IPv6 rule and a stranger at any other IPv6 address is not.
import { describe, expect, it } from 'vitest';
import { peerSetUpdates, ruleset, type UnderlayPeers } from '../../../datapath/firewall.js';

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
});
