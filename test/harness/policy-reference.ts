// A reference evaluator for security groups, written from the semantics in the
// policy issue and nothing else (not from policy/model.ts), for differential tests.
import type { Rule, Selector } from '../../policy/rules.js';

export interface RefMember {
  container: string;
  addrs: string[];
  groups: string[];
}

export interface RefFlow {
  src: string;
  dst: string;
  proto: 'tcp' | 'udp' | 'icmp';
  port?: number;
}

/** An address as a number: IPv4's 32 bits, or IPv6's 128 (written out by hand, :: expanded). */
function ipNumber(a: string): bigint {
  if (!a.includes(':')) return BigInt(a.split('.').reduce((n, x) => n * 256 + Number(x), 0));
  const [head, tail = ''] = a.split('::');
  const h = head ? head.split(':') : [];
  const t = a.includes('::') ? (tail ? tail.split(':') : []) : [];
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((n, g) => (n << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function inCidr(addr: string, cidr: string): boolean {
  const [net, bits] = cidr.split('/');
  if (addr.includes(':') !== net.includes(':')) return false; // one family never covers the other
  const host = BigInt((net.includes(':') ? 128 : 32) - Number(bits));
  return ipNumber(addr) >> host === ipNumber(net) >> host;
}

/** Is the flow allowed: the sender's egress and the receiver's ingress both let it through. */
export function referenceAllows(rules: Rule[], members: RefMember[], f: RefFlow): boolean {
  const owner = (addr: string) => members.find((m) => m.addrs.includes(addr));
  const isTarget = (s: Selector, m: RefMember) =>
    (s.kind === 'group' && m.groups.includes(s.name)) || (s.kind === 'container' && s.id === m.container);
  const isPeer = (s: Selector, addr: string) => {
    const m = owner(addr);
    if (s.kind === 'any') return true;
    if (s.kind === 'cidr') return inCidr(addr, s.cidr);
    return m !== undefined && isTarget(s, m);
  };
  const protoOk = (r: Rule) =>
    r.proto === 'any' ||
    (r.proto === f.proto && (!r.ports || (f.port !== undefined && r.ports[0] <= f.port && f.port <= r.ports[1])));
  const side = (m: RefMember | undefined, direction: 'ingress' | 'egress', other: string) => {
    if (!m) return true; // not a container: nothing of it is limited
    const mine = rules.filter((r) => r.direction === direction && isTarget(r.target, m));
    return mine.length === 0 || mine.some((r) => isPeer(r.peer, other) && protoOk(r));
  };
  return side(owner(f.src), 'egress', f.dst) && side(owner(f.dst), 'ingress', f.src);
}
