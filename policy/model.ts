// The compiled policy: which rules open which containers, and the decision for a
// flow. The nftables rules each host installs are generated from this model, and
// `weft policy check` asks the same model, so what it says is what the kernel does.
//
// Semantics: a container whose groups (or itself) are the target of no ingress
// rule accepts everything; once one is, it accepts only what some such rule
// allows. The same for egress. A flow needs both the sender's egress and the
// receiver's ingress; replies of an allowed flow always pass (conntrack).
import { contains, parseCidr, parseIp } from '../net/addr.js';
import { contains6, parseCidr6, parseIp6 } from '../net/addr6.js';
import { describeRule, formatSelector, type Rule, type Selector } from './rules.js';

export interface Member {
  container: string;
  /** The peer the container lives at. */
  peer: string;
  addrs: string[];
  groups: string[];
}

export interface Flow {
  src: string;
  dst: string;
  /** tcp, udp, icmp (ICMPv6 too; other protocols only match rules for any). */
  proto: string;
  port?: number;
}

export type Verdict =
  { kind: 'open'; why: string } | { kind: 'allowed'; rule: Rule; why: string } | { kind: 'denied'; why: string };

export interface Decision {
  allowed: boolean;
  egress: Verdict;
  ingress: Verdict;
  /** One line for people. */
  summary: string;
}

/** Whether a container selector names this container: its full key, or a Docker id's 12+ hex prefix. */
export function containerMatches(id: string, container: string): boolean {
  return (
    id === container || (/^[0-9a-f]{12,63}$/.test(id) && /^[0-9a-f]{64}$/.test(container) && container.startsWith(id))
  );
}

export class PolicyModel {
  readonly byAddr = new Map<string, Member>();
  readonly groupAddrs = new Map<string, Set<string>>();

  constructor(
    readonly rules: Rule[],
    readonly members: Member[],
  ) {
    for (const m of members) {
      for (const a of m.addrs) this.byAddr.set(a, m);
      for (const g of m.groups) {
        let s = this.groupAddrs.get(g);
        if (!s) this.groupAddrs.set(g, (s = new Set()));
        for (const a of m.addrs) s.add(a);
      }
    }
  }

  /** Does the selector take in this member (as a rule's target)? */
  targets(sel: Selector, m: Member): boolean {
    if (sel.kind === 'group') return m.groups.includes(sel.name);
    if (sel.kind === 'container') return containerMatches(sel.id, m.container);
    return false;
  }

  /** Does the selector take in this address (as a rule's peer)? */
  covers(sel: Selector, addr: string): boolean {
    switch (sel.kind) {
      case 'any':
        return true;
      case 'group':
        return this.groupAddrs.get(sel.name)?.has(addr) ?? false;
      case 'container': {
        const m = this.byAddr.get(addr);
        return m !== undefined && containerMatches(sel.id, m.container);
      }
      case 'cidr':
        // A CIDR of one family never covers an address of the other (parsing throws).
        try {
          return sel.cidr.includes(':')
            ? contains6(parseCidr6(sel.cidr), { start: parseIp6(addr), prefix: 128 })
            : contains(parseCidr(sel.cidr), { start: parseIp(addr), prefix: 32 });
        } catch {
          return false;
        }
    }
  }

  /** The rules that open a member in a direction (none: the member is open that way). */
  rulesFor(m: Member, direction: 'ingress' | 'egress'): Rule[] {
    return this.rules.filter((r) => r.direction === direction && this.targets(r.target, m));
  }

  static protoMatches(r: Rule, f: Flow): boolean {
    if (r.proto === 'any') return true;
    if (r.proto !== f.proto) return false;
    if (!r.ports) return true;
    return f.port !== undefined && f.port >= r.ports[0] && f.port <= r.ports[1];
  }

  private verdict(m: Member | undefined, direction: 'ingress' | 'egress', other: string, f: Flow): Verdict {
    const side = direction === 'ingress' ? 'receiver' : 'sender';
    if (!m) return { kind: 'open', why: `the ${side} ${direction === 'ingress' ? f.dst : f.src} is no weft container` };
    const rules = this.rulesFor(m, direction);
    if (rules.length === 0) return { kind: 'open', why: `${m.container} has no ${direction} rules` };
    const rule = rules.find((r) => this.covers(r.peer, other) && PolicyModel.protoMatches(r, f));
    if (rule) return { kind: 'allowed', rule, why: `rule ${rule.id}: ${describeRule(rule)}` };
    const by = [...new Set(rules.map((r) => formatSelector(r.target)))].join(', ');
    return {
      kind: 'denied',
      why: `${direction} of ${m.container} is limited by the rules of ${by}, and none of them allows ${flowText(f)}`,
    };
  }

  decide(f: Flow): Decision {
    const egress = this.verdict(this.byAddr.get(f.src), 'egress', f.dst, f);
    const ingress = this.verdict(this.byAddr.get(f.dst), 'ingress', f.src, f);
    const allowed = egress.kind !== 'denied' && ingress.kind !== 'denied';
    const deciding = [egress, ingress].filter((v) => v.kind !== 'open');
    const summary = allowed
      ? deciding.length === 0
        ? `allowed: no rule limits ${flowText(f)} (${egress.why}; ${ingress.why})`
        : `allowed by ${deciding.map((v) => v.why).join(' and ')}`
      : `denied: ${[egress, ingress]
          .filter((v) => v.kind === 'denied')
          .map((v) => v.why)
          .join('; ')}`;
    return { allowed, egress, ingress, summary };
  }
}

function flowText(f: Flow): string {
  return `${f.proto}${f.port !== undefined && (f.proto === 'tcp' || f.proto === 'udp') ? `/${f.port}` : ''} from ${f.src} to ${f.dst}`;
}
