// Which underlay addresses the datapath takes: their text goes into nftables sets, `bridge fdb` lines
// and the addon's address table, so anything else would break a whole ruleset or alias a peer.
import { describe, expect, it } from 'vitest';
import { underlayAddressProblem } from '../../../net/validate.js';

describe('underlay addresses', () => {
  it('takes plain unicast addresses of both families', () => {
    for (const a of ['198.18.0.2', '10.1.2.3', 'fd00:198:18::2', '2001:db8::1', '127.0.0.1', '::1'])
      expect(underlayAddressProblem(a), a).toBeNull();
  });

  it('refuses zones, link-local, 0.0.0.0/8 (the addon numbers IPv6 peers there), multicast, unspecified, mapped and non-canonical text', () => {
    const refused: [string, RegExp][] = [
      ['fe80::1%eth0', /link-local \(with a zone\)/],
      ['fe80::1', /link-local/],
      ['febf::1', /link-local/],
      ['0.0.0.5', /0\.0\.0\.0\/8/],
      ['224.0.0.1', /multicast/],
      ['255.255.255.255', /multicast or reserved/],
      ['ff02::1', /multicast/],
      ['::', /unspecified/],
      ['::ffff:198.18.0.2', /IPv4-mapped/],
      ['FD00::1', /canonical/],
      ['fd00:0::1', /canonical/],
      ['198.018.0.2', /canonical/],
      ['1.2.3', /not an IPv4 address/],
      ['example.com', /not an IP address/],
      ['fd00::1 } ; flush ruleset', /not an IP address/],
    ];
    for (const [a, why] of refused) expect(underlayAddressProblem(a), a).toMatch(why);
  });
});
