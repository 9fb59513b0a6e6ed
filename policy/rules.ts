// Security group rules: what they say, how they are written on the command line
// and the wire, and how they are checked. A rule protects a target (a group or one
// container) in one direction and allows one kind of peer (a group, a container,
// a CIDR or any) by protocol and port.
import { WeftError } from '../lib/errors.js';
import { formatCidr, parseCidr } from '../net/addr.js';
import { canonicalCidr6 } from '../net/validate.js';
import { GROUP_NAME } from '../net/validate.js';

export type Proto = 'tcp' | 'udp' | 'icmp' | 'any';
type Direction = 'ingress' | 'egress';

/** Who a rule talks about: a group's members, one container, a network, or anyone. */
export type Selector =
  | { kind: 'group'; name: string }
  | { kind: 'container'; id: string }
  | { kind: 'cidr'; cidr: string }
  | { kind: 'any' };

export interface Rule {
  id: string;
  direction: Direction;
  /** The containers this rule opens (ingress: receivers; egress: senders): a group or one container. */
  target: Selector;
  /** Ingress: who may send; egress: where they may send. */
  peer: Selector;
  proto: Proto;
  /** Inclusive port range, tcp/udp only; absent: every port. */
  ports?: [number, number];
}

const CONTAINER_ID = /^[A-Za-z0-9_.:-]{1,200}$/;
const RULE_ID = /^[0-9a-f]{8,32}$/;
const PROTOS: Proto[] = ['tcp', 'udp', 'icmp', 'any'];

/** A rule that is not one (from a request, the wire or the data dir). */
export class RuleError extends WeftError {
  constructor(message: string) {
    super('invalid', message);
  }
}

export function checkGroupName(name: string): string {
  if (!GROUP_NAME.test(name))
    throw new RuleError(
      `group "${name.slice(0, 80)}" is not a group name (lower-case letters, digits, _ . -; up to 63)`,
    );
  return name;
}

/** GROUP, container:ID, a CIDR or address, or any. */
function parseSelector(text: string, what: string): Selector {
  const t = text.trim();
  if (t === 'any') return { kind: 'any' };
  if (t.startsWith('container:')) {
    const id = t.slice('container:'.length);
    if (!CONTAINER_ID.test(id)) throw new RuleError(`${what}: "${t.slice(0, 80)}" is not container:ID`);
    return { kind: 'container', id };
  }
  if (/^[\da-fA-F:.]*:[\da-fA-F:.]*(\/\d+)?$/.test(t)) {
    try {
      return { kind: 'cidr', cidr: canonicalCidr6(t.includes('/') ? t : `${t}/128`, false, what) };
    } catch (err) {
      throw new RuleError((err as Error).message);
    }
  }
  if (/^[\d.]+(\/\d+)?$/.test(t)) {
    try {
      const c = parseCidr(t.includes('/') ? t : `${t}/32`);
      return { kind: 'cidr', cidr: formatCidr(c) };
    } catch (err) {
      throw new RuleError(`${what}: ${(err as Error).message}`);
    }
  }
  try {
    return { kind: 'group', name: checkGroupName(t) };
  } catch {
    throw new RuleError(`${what}: "${t.slice(0, 80)}" is neither a group name, container:ID, a CIDR nor any`);
  }
}

export function formatSelector(s: Selector): string {
  switch (s.kind) {
    case 'any':
      return 'any';
    case 'group':
      return s.name;
    case 'container':
      return `container:${s.id}`;
    case 'cidr':
      return s.cidr;
  }
}

export function parseProto(text: string): Proto {
  const p = text.trim().toLowerCase() as Proto;
  if (!PROTOS.includes(p)) throw new RuleError(`unknown protocol "${text.slice(0, 40)}": use tcp, udp, icmp or any`);
  return p;
}

/** N or N-M, 1..65535. */
function parsePorts(text: string): [number, number] {
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text.trim());
  if (!m) throw new RuleError(`port "${text.slice(0, 40)}" is not N or N-M`);
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (lo < 1 || hi > 65535 || lo > hi) throw new RuleError(`port range ${text} is outside 1-65535 or reversed`);
  return [lo, hi];
}

/** What the CLI and API take: --to, --from, --proto, --port, --egress. */
export interface RuleRequest {
  to?: unknown;
  from?: unknown;
  proto?: unknown;
  port?: unknown;
  egress?: unknown;
}

/** A rule from a request, checked whole; its id is given by the caller. */
export function ruleFromRequest(id: string, r: RuleRequest): Rule {
  if (typeof r.to !== 'string' || r.to === '')
    throw new RuleError('--to is required (a group, container:ID' + (r.egress === true ? ', a CIDR or any' : '') + ')');
  if (typeof r.from !== 'string' || r.from === '')
    throw new RuleError('--from is required (a group, container:ID, a CIDR or any)');
  const egress = r.egress === true;
  const to = parseSelector(r.to, '--to');
  const from = parseSelector(r.from, '--from');
  const target = egress ? from : to;
  const peer = egress ? to : from;
  if (target.kind !== 'group' && target.kind !== 'container') {
    throw new RuleError(
      egress
        ? '--from of an egress rule must be a group or container:ID (the senders it opens)'
        : '--to must be a group or container:ID (the receivers it opens)',
    );
  }
  const proto =
    r.proto === undefined
      ? 'any'
      : typeof r.proto === 'string'
        ? parseProto(r.proto)
        : (() => {
            throw new RuleError('--proto must be tcp, udp, icmp or any');
          })();
  let ports: [number, number] | undefined;
  if (r.port !== undefined && r.port !== '') {
    if (typeof r.port !== 'string' && typeof r.port !== 'number') throw new RuleError('--port must be N or N-M');
    if (proto !== 'tcp' && proto !== 'udp') throw new RuleError('--port needs --proto tcp or udp');
    ports = parsePorts(String(r.port));
  }
  return checkRule({ id, direction: egress ? 'egress' : 'ingress', target, peer, proto, ...(ports ? { ports } : {}) });
}

/** Validates a rule from anywhere (the wire, the data dir); returns it or throws RuleError. */
export function checkRule(x: unknown): Rule {
  const r = x as Rule;
  if (!r || typeof r !== 'object') throw new RuleError('rule is not an object');
  if (typeof r.id !== 'string' || !RULE_ID.test(r.id)) throw new RuleError('rule id is malformed');
  if (r.direction !== 'ingress' && r.direction !== 'egress') throw new RuleError('rule direction is malformed');
  const sel = (s: unknown): Selector => {
    const v = s as Selector;
    if (!v || typeof v !== 'object') throw new RuleError('rule selector is malformed');
    if (v.kind === 'any') return { kind: 'any' };
    if (v.kind === 'group' && typeof v.name === 'string') return { kind: 'group', name: checkGroupName(v.name) };
    if (v.kind === 'container' && typeof v.id === 'string' && CONTAINER_ID.test(v.id))
      return { kind: 'container', id: v.id };
    if (v.kind === 'cidr' && typeof v.cidr === 'string') {
      try {
        if (v.cidr.includes(':')) return { kind: 'cidr', cidr: canonicalCidr6(v.cidr, false, 'rule CIDR') };
        return { kind: 'cidr', cidr: formatCidr(parseCidr(v.cidr)) };
      } catch (err) {
        throw new RuleError(`rule CIDR: ${(err as Error).message}`);
      }
    }
    throw new RuleError('rule selector is malformed');
  };
  const target = sel(r.target);
  const peer = sel(r.peer);
  if (target.kind !== 'group' && target.kind !== 'container')
    throw new RuleError('a rule protects a group or a container');
  if (!PROTOS.includes(r.proto)) throw new RuleError('rule protocol is malformed');
  let ports: [number, number] | undefined;
  if (r.ports !== undefined) {
    if (
      !Array.isArray(r.ports) ||
      r.ports.length !== 2 ||
      !r.ports.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535) ||
      r.ports[0] > r.ports[1]
    )
      throw new RuleError('rule ports are malformed');
    if (r.proto !== 'tcp' && r.proto !== 'udp') throw new RuleError('ports need tcp or udp');
    ports = [r.ports[0], r.ports[1]];
  }
  return { id: r.id, direction: r.direction, target, peer, proto: r.proto, ...(ports ? { ports } : {}) };
}

/** One line, the way `weft policy list` prints it. */
export function describeRule(r: Rule): string {
  const what =
    r.proto === 'any'
      ? 'any protocol'
      : r.ports
        ? `${r.proto}/${r.ports[0] === r.ports[1] ? r.ports[0] : `${r.ports[0]}-${r.ports[1]}`}`
        : r.proto;
  return r.direction === 'ingress'
    ? `${formatSelector(r.target)} accepts ${what} from ${formatSelector(r.peer)}`
    : `${formatSelector(r.target)} may send ${what} to ${formatSelector(r.peer)}`;
}
