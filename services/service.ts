// What a service is: a name, a virtual IP from the service range, and how its
// backends are chosen (the live members of a group, or named containers); how
// it is checked from the wire and from requests; how a VIP is picked; and which
// service serves a VIP when two picked the same one in a partition.
import { WeftError, type ErrorCode } from '../lib/errors.js';
import { createHash } from 'node:crypto';
import { contains, formatCidr, formatIp, isIpv4, parseCidr, parseIp, type Cidr } from '../net/addr.js';
import { GROUP_NAME } from '../net/validate.js';
import { formatCidr6, formatIp6, parseCidr6, type Cidr6 } from '../net/addr6.js';

export type Affinity = 'none' | 'client';

export interface Service {
  name: string;
  vip: string;
  /** Backends: the live members of this group... */
  group?: string;
  /** ...or these containers (their keys: netns:NAME, a Docker id, cni:ID ...). */
  backends?: string[];
  affinity: Affinity;
  /** A TCP port probed on each backend from its own host; failing backends take no new flows. */
  check?: { proto: 'tcp'; port: number };
  /** When it was created (ms, the creating host's clock): of two services on one VIP, the older keeps it. */
  created: number;
}

/** A service that is not one, or cannot be made: 'invalid' unless said otherwise. */
export class ServiceError extends WeftError {
  constructor(message: string, code: ErrorCode = 'invalid') {
    super(code, message);
  }
}

export const SERVICE_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const CONTAINER_KEY = /^[A-Za-z0-9_.:-]{1,200}$/;

/**
 * Validates a service (from the wire, or built from a request); throws ServiceError. With `range`
 * (the --service-range), a VIP outside it is refused: a VIP is translated in every client container,
 * so one outside the range would let its creator redirect any address there.
 */
export function checkService(v: unknown, name?: string, range?: Cidr): Service {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ServiceError('service is not an object');
  const s = v as Record<string, unknown>;
  if (typeof s.name !== 'string' || !SERVICE_NAME.test(s.name))
    throw new ServiceError(
      `service name "${String(s.name).slice(0, 80)}" is not a DNS label (lower-case letters, digits and -, up to 63)`,
    );
  if (name !== undefined && s.name !== name) throw new ServiceError('service entry id does not match its name');
  // Canonical only: a VIP is compared as text everywhere.
  if (typeof s.vip !== 'string' || !isIpv4(s.vip) || formatIp(parseIp(s.vip)) !== s.vip)
    throw new ServiceError('service VIP is not an IPv4 address');
  if (range && !inRange(range, s.vip))
    throw new ServiceError(`service VIP ${s.vip} is outside the service range ${formatCidr(range)}`);
  const hasGroup = s.group !== undefined;
  const hasBackends = s.backends !== undefined;
  if (hasGroup === hasBackends) throw new ServiceError('a service has either a group or a list of backends');
  if (hasGroup && (typeof s.group !== 'string' || !GROUP_NAME.test(s.group)))
    throw new ServiceError(`"${String(s.group).slice(0, 80)}" is not a group name`);
  if (hasBackends) {
    const b = s.backends;
    if (
      !Array.isArray(b) ||
      b.length === 0 ||
      b.length > 256 ||
      !b.every((x) => typeof x === 'string' && CONTAINER_KEY.test(x))
    )
      throw new ServiceError('backends must be 1-256 container names');
  }
  if (s.affinity !== 'none' && s.affinity !== 'client') throw new ServiceError('affinity is none or client');
  if (s.check !== undefined) {
    const c = s.check as { proto?: unknown; port?: unknown };
    if (
      typeof c !== 'object' ||
      c === null ||
      c.proto !== 'tcp' ||
      typeof c.port !== 'number' ||
      !Number.isInteger(c.port) ||
      c.port < 1 ||
      c.port > 65535
    )
      throw new ServiceError('check is tcp:PORT');
  }
  if (typeof s.created !== 'number' || !Number.isSafeInteger(s.created) || s.created < 0)
    throw new ServiceError('service creation time is malformed');
  return {
    name: s.name,
    vip: s.vip,
    ...(hasGroup ? { group: s.group as string } : { backends: [...(s.backends as string[])] }),
    affinity: s.affinity,
    ...(s.check ? { check: { proto: 'tcp' as const, port: (s.check as { port: number }).port } } : {}),
    created: s.created,
  };
}

/** "tcp:8080" */
export function parseCheck(text: string): { proto: 'tcp'; port: number } {
  const m = /^tcp:(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[1]) : NaN;
  if (!m || port < 1 || port > 65535) throw new ServiceError(`--check "${text.slice(0, 40)}" is not tcp:PORT`);
  return { proto: 'tcp', port };
}

/** Usable addresses of a range (not its network and broadcast addresses). */
function usable(range: Cidr): { first: number; count: number } {
  const size = 2 ** (32 - range.prefix);
  return size <= 2 ? { first: range.start, count: size } : { first: range.start + 1, count: size - 2 };
}

/**
 * A VIP for a service: from a hash of `seed` (the name), the first address not taken, so every
 * peer picking for the same name with the same view picks the same address.
 */
export function pickVip(range: Cidr, taken: Set<string>, seed: string): string {
  const { first, count } = usable(range);
  const start = createHash('sha256').update(seed).digest().readUInt32BE(0) % count;
  for (let i = 0; i < count; i++) {
    const ip = formatIp(first + ((start + i) % count));
    if (!taken.has(ip)) return ip;
  }
  throw new ServiceError(
    `the service range ${formatIp(range.start)}/${range.prefix} is full (${count} services); remove some, or use a larger --service-range`,
    'full',
  );
}

function inRange(range: Cidr, ip: string): boolean {
  try {
    return contains(range, { start: parseIp(ip), prefix: 32 });
  } catch {
    return false;
  }
}

/** Of the services that share a VIP, the one that keeps it: the oldest, then the first by name. */
function precedes(a: Service, b: Service): boolean {
  return a.created !== b.created ? a.created < b.created : a.name < b.name;
}

/**
 * Which services serve their VIP, and which lost it to another (two hosts picked the same address
 * while apart): every peer computes the same answer from the same table.
 */
export function resolveVips(services: Service[]): {
  served: Service[];
  conflicts: { service: Service; takenBy: string }[];
} {
  const byVip = new Map<string, Service>();
  for (const s of services) {
    const cur = byVip.get(s.vip);
    if (!cur || precedes(s, cur)) byVip.set(s.vip, s);
  }
  const served: Service[] = [];
  const conflicts: { service: Service; takenBy: string }[] = [];
  for (const s of services) {
    const winner = byVip.get(s.vip)!;
    if (winner === s) served.push(s);
    else conflicts.push({ service: s, takenBy: winner.name });
  }
  return { served, conflicts };
}

export function parseServiceRange(text: string): Cidr {
  let r: Cidr;
  try {
    r = parseCidr(text);
  } catch (err) {
    throw new ServiceError(`--service-range ${text}: ${(err as Error).message}`);
  }
  if (r.prefix > 30) throw new ServiceError(`--service-range ${text} is too small (at most /30)`);
  return r;
}

/**
 * --service-range6 (with --ipv6): each service's IPv6 VIP sits at the same offset in it as its IPv4
 * VIP in --service-range, so it needs no address of its own on the wire and every peer (with the same
 * ranges) knows it. It must hold at least as many addresses as --service-range.
 */
export function parseServiceRange6(text: string, range: Cidr): Cidr6 {
  let r: Cidr6;
  try {
    r = parseCidr6(text);
  } catch (err) {
    throw new ServiceError(`--service-range6 ${text}: ${(err as Error).message}`);
  }
  const most = 128 - (32 - range.prefix);
  if (r.prefix > most)
    throw new ServiceError(
      `--service-range6 ${formatCidr6(r)} is smaller than --service-range ${formatCidr(range)} (it needs /${most} or larger: each IPv4 VIP has its IPv6 one at the same offset)`,
    );
  return r;
}

/** A service's IPv6 VIP: at its IPv4 VIP's offset in the IPv6 service range. */
export function vip6Of(vip: string, range: Cidr, range6: Cidr6): string {
  return formatIp6(range6.start + BigInt(parseIp(vip) - range.start));
}
