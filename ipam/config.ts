// Turns the router's --ipalloc-* options into the allocator's configuration, with clear errors.
import { parsePeerName } from '../mesh/index.js';
import { contains, formatCidr, parseCidr, type Cidr } from '../net/addr.js';
import { contains6, formatCidr6, parseCidr6, type Addr6 } from '../net/addr6.js';
import type { CidrOf } from '../net/family.js';
import { IPV6 } from '../net/family.js';
import type { InitMode } from './allocator.js';

export interface IpamOptions {
  ipallocRange: string;
  ipallocDefaultSubnet?: string;
  ipallocInit: string;
  peers: string[];
}

/** The IPv6 range and default subnet (--ipalloc-range6, --ipalloc-default-subnet6), with clear errors. */
export function ipam6Config(o: { ipallocRange6: string; ipallocDefaultSubnet6?: string }): {
  range: CidrOf<Addr6>;
  defaultSubnet: CidrOf<Addr6>;
} {
  const parse = (flag: string, text: string) => {
    if (!text.includes(':')) throw new Error(`${flag} ${text}: an IPv6 block is expected (like fd77:6566:7400::/48)`);
    try {
      const c = parseCidr6(text);
      return { start: c.start, prefix: c.prefix };
    } catch (err) {
      throw new Error(`${flag}: ${(err as Error).message}`);
    }
  };
  const range = parse('--ipalloc-range6', o.ipallocRange6);
  if (range.prefix > IPV6.maxSubnetPrefix)
    throw new Error(`--ipalloc-range6 ${o.ipallocRange6} is too small (at most /${IPV6.maxSubnetPrefix})`);
  let defaultSubnet = range;
  if (o.ipallocDefaultSubnet6) {
    defaultSubnet = parse('--ipalloc-default-subnet6', o.ipallocDefaultSubnet6);
    if (!contains6(range, defaultSubnet))
      throw new Error(
        `--ipalloc-default-subnet6 ${formatCidr6(defaultSubnet)} is not inside --ipalloc-range6 ${formatCidr6(range)}`,
      );
    if (defaultSubnet.prefix > IPV6.maxSubnetPrefix)
      throw new Error(
        `--ipalloc-default-subnet6 ${formatCidr6(defaultSubnet)} is too small (at most /${IPV6.maxSubnetPrefix})`,
      );
  }
  return { range, defaultSubnet };
}

export function ipamConfig(o: IpamOptions): { range: Cidr; defaultSubnet: Cidr; init: InitMode } {
  const range = parseCidr(o.ipallocRange);
  if (range.prefix > 30) throw new Error(`--ipalloc-range ${o.ipallocRange} is too small (at most /30)`);
  let defaultSubnet: Cidr = range;
  if (o.ipallocDefaultSubnet) {
    defaultSubnet = parseCidr(o.ipallocDefaultSubnet);
    if (!contains(range, defaultSubnet)) {
      throw new Error(
        `--ipalloc-default-subnet ${formatCidr(defaultSubnet)} is not inside --ipalloc-range ${formatCidr(range)}`,
      );
    }
  }
  return {
    range: { start: range.start, prefix: range.prefix },
    defaultSubnet: { start: defaultSubnet.start, prefix: defaultSubnet.prefix },
    init: parseInit(o.ipallocInit, o.peers.length),
  };
}

function parseInit(text: string, peerCount: number): InitMode {
  const t = text.trim();
  if (t === 'observer') return { kind: 'observer' };
  const consensus = /^consensus(?:=(\d+))?$/.exec(t);
  if (consensus) {
    const n = consensus[1] === undefined ? peerCount + 1 : Number(consensus[1]);
    if (!Number.isInteger(n) || n < 1)
      throw new Error(`--ipalloc-init ${t}: the number of initial peers must be at least 1`);
    return { kind: 'consensus', quorum: Math.floor(n / 2) + 1, peers: consensus[1] === undefined ? peerCount : 0 };
  }
  const seed = /^seed=(.+)$/.exec(t);
  if (seed) {
    const seeds = seed[1].split(',').map((s) => {
      try {
        return parsePeerName(s);
      } catch {
        throw new Error(`--ipalloc-init seed: "${s}" is not a peer name (aa:bb:cc:dd:ee:ff; see weft status)`);
      }
    });
    return { kind: 'seed', seeds };
  }
  throw new Error(`--ipalloc-init "${t}": use consensus, consensus=N, seed=NAME,... or observer`);
}
