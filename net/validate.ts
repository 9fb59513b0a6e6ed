// Validators for what weft reads from outside (the wire, Docker, CNI, the API):
// each returns the value in its one canonical form or throws saying what is
// wrong, so that two spellings of the same thing never become two entries, and
// a value that passed here is safe to put into a command line or a ruleset.
import { WeftError } from '../lib/errors.js';
import { formatIp, parseCidr, parseIp } from './addr.js';
import { formatIp6, isIpv6, parseCidr6, parseIp6 } from './addr6.js';

class InvalidValue extends WeftError {
  constructor(message: string) {
    super('invalid', message);
  }
}

/** A unicast or multicast Ethernet address, as lower-case "aa:bb:cc:dd:ee:ff". */
export function canonicalMac(text: unknown, what = 'MAC address'): string {
  if (typeof text !== 'string' || !/^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$/.test(text))
    throw new InvalidValue(`${what} "${String(text).slice(0, 40)}" is not six hex pairs (aa:bb:cc:dd:ee:ff)`);
  const mac = text.toLowerCase().replaceAll('-', ':');
  if (mac === '00:00:00:00:00:00' || mac === 'ff:ff:ff:ff:ff:ff')
    throw new InvalidValue(`${what} ${mac} is not a station's address`);
  return mac;
}

/** An IPv4 address in dotted decimal without leading zeros. */
function canonicalIpv4(text: unknown, what = 'address'): string {
  if (typeof text !== 'string' || text.length > 15)
    throw new InvalidValue(`${what} "${String(text).slice(0, 40)}" is not an IPv4 address`);
  try {
    return formatIp(parseIp(text));
  } catch (err) {
    throw new InvalidValue(`${what}: ${(err as Error).message}`);
  }
}

/** "a.b.c.d/n" in canonical form; with `allowHost`, the address keeps its host bits (an interface address). */
export function canonicalCidr(text: unknown, allowHost: boolean, what = 'CIDR'): string {
  if (typeof text !== 'string' || text.length > 18)
    throw new InvalidValue(`${what} "${String(text).slice(0, 40)}" is not a.b.c.d/n`);
  try {
    const c = parseCidr(text, allowHost);
    return `${formatIp(allowHost ? c.addr : c.start)}/${c.prefix}`;
  } catch (err) {
    throw new InvalidValue(`${what}: ${(err as Error).message}`);
  }
}

/** An IPv6 "ip/prefix" in its one form; with `allowHost`, the address keeps its host bits. */
export function canonicalCidr6(text: unknown, allowHost: boolean, what = 'CIDR'): string {
  if (typeof text !== 'string' || text.length > 49)
    throw new InvalidValue(`${what} "${String(text).slice(0, 60)}" is not an IPv6 address/n`);
  try {
    const c = parseCidr6(text, allowHost);
    return `${formatIp6(allowHost ? c.addr : c.start)}/${c.prefix}`;
  } catch (err) {
    throw new InvalidValue(`${what}: ${(err as Error).message}`);
  }
}

/** An address of either family in its one form: dotted decimal, or IPv6 as RFC 5952 writes it. */
export function canonicalIp(text: unknown, what = 'address'): string {
  if (typeof text === 'string' && text.includes(':')) {
    if (text.length > 45 || !isIpv6(text))
      throw new InvalidValue(`${what} "${text.slice(0, 60)}" is not an IPv4 or IPv6 address`);
    return formatIp6(parseIp6(text));
  }
  return canonicalIpv4(text, what);
}

const LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * A DNS name, lower case, fully qualified (with the final dot). Labels of letters, digits, "_" and
 * "-" (not at either end), 1-63 each; 253 characters at most; no empty label, so nothing starts with
 * a dot or has two in a row.
 */
export function canonicalDnsName(text: unknown, what = 'name'): string {
  if (typeof text !== 'string') throw new InvalidValue(`${what} is not a string`);
  const n = text.trim().toLowerCase();
  const bare = n.endsWith('.') ? n.slice(0, -1) : n;
  if (bare.length === 0 || bare.length > 253)
    throw new InvalidValue(`${what} "${text.slice(0, 80)}" must have 1 to 253 characters`);
  for (const label of bare.split('.')) {
    if (!LABEL.test(label))
      throw new InvalidValue(
        `${what} "${text.slice(0, 80)}" is not a DNS name (labels of 1-63 letters, digits, _ or -, not starting or ending with -, separated by single dots)`,
      );
  }
  return `${bare}.`;
}

/** A security group's name: lower-case letters, digits, _ . -, up to 63, starting with a letter or digit. */
export const GROUP_NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

/** Why a subnet cannot serve containers of only these families (an IPv4 subnet for IPv6-only ones), or null. */
export function subnetFamilyProblem(
  subnet: string | undefined,
  families: ('IPv4' | 'IPv6')[] | undefined,
): string | null {
  if (subnet === undefined || families === undefined) return null;
  const family = subnet.includes(':') ? 'IPv6' : 'IPv4';
  return families.includes(family)
    ? null
    : `the subnet ${subnet} is ${family}, and the pods are ${families.join(' and ')} only`;
}

/** A list of address families as Kubernetes names them: ["IPv4"], ["IPv6"] or both, each once. */
export function isIpFamilies(x: unknown): x is ('IPv4' | 'IPv6')[] {
  return (
    Array.isArray(x) &&
    x.length >= 1 &&
    x.length <= 2 &&
    new Set(x).size === x.length &&
    x.every((f) => f === 'IPv4' || f === 'IPv6')
  );
}

/** A network interface name (IFNAMSIZ: 15 characters), safe on a command line. */
export function checkIfName(text: unknown, what = 'interface name'): string {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/.test(text))
    throw new InvalidValue(
      `${what} "${String(text).slice(0, 40)}" is not an interface name (1-15 letters, digits, _ . -)`,
    );
  return text;
}

/**
 * Why a peer's underlay address (a connection's remote host) cannot carry the datapath, or null when
 * it can. Its text goes into nftables sets, `bridge fdb` lines and the addon's address table, so only
 * plain unicast addresses in their canonical form pass: not one with a zone (`fe80::1%eth0`: a
 * link-local peer, whose address the sets and the kernel's VXLAN table cannot tell apart by link), nor
 * 0.0.0.0/8 (in the addon's metadata those numbers are IPv6 handles), multicast or unspecified ones.
 */
export function underlayAddressProblem(host: string): string | null {
  if (host.includes('%')) return `${host.slice(0, 60)} is link-local (with a zone): give the peer a global address`;
  if (/^[\d.]+$/.test(host)) {
    let a: number;
    try {
      a = parseIp(host);
    } catch {
      return `${host.slice(0, 60)} is not an IPv4 address`;
    }
    if (formatIp(a) !== host) return `${host.slice(0, 60)} is not in its canonical form`;
    if (a >>> 24 === 0) return `${host} is in 0.0.0.0/8, no host's address`;
    if (a >>> 28 >= 14) return `${host} is a multicast or reserved address`;
    return null;
  }
  let a: bigint;
  try {
    a = parseIp6(host);
  } catch {
    return `${host.slice(0, 60)} is not an IP address`;
  }
  const top = a >> 112n;
  if (a === 0n) return `${host} is the unspecified address`;
  if (top >> 8n === 0xffn) return `${host} is a multicast address`;
  if (top >> 6n === 0x3fan) return `${host} is link-local: give the peer a global address`;
  if (a >> 32n === 0xffffn) return `${host} is an IPv4-mapped address`;
  if (formatIp6(a) !== host) return `${host.slice(0, 60)} is not in its canonical form`;
  return null;
}
