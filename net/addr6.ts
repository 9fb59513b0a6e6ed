// IPv6 addresses as unsigned 128-bit bigints, and CIDR blocks over them: the
// IPv6 counterpart of addr.ts. Text is read in every form RFC 4291 allows and
// written in the one form RFC 5952 recommends (lower case, no leading zeros, the
// longest run of two or more zero groups as "::", the first of equal runs), so
// two spellings of one address are one string. Always in hex groups, also for
// IPv4-mapped addresses (not the mixed "::ffff:1.2.3.4" of its section 5): one
// form for every address, as the WHATWG URL parser writes it.

export type Addr6 = bigint;

export interface Cidr6 {
  /** Network address (host bits zero). */
  start: Addr6;
  prefix: number;
}

const BITS = 128n;
const MAX = (1n << BITS) - 1n;
const HEX_GROUP = /^[0-9A-Fa-f]{1,4}$/;
const DOTTED = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** The 16-bit groups of one side of "::" (a trailing dotted quad counts as two); null when malformed. */
function groups(side: string, last: boolean): number[] | null {
  if (side === '') return [];
  const parts = side.split(':');
  const out: number[] = [];
  for (const [i, p] of parts.entries()) {
    const quad = DOTTED.exec(p);
    if (quad && last && i === parts.length - 1) {
      const bytes = quad.slice(1).map(Number);
      // No leading zeros in a dotted quad (RFC 6943: "010" is ambiguous), each part 0-255.
      if (quad.slice(1).some((b, j) => bytes[j] > 255 || (b.length > 1 && b.startsWith('0')))) return null;
      out.push(bytes[0] * 256 + bytes[1], bytes[2] * 256 + bytes[3]);
    } else if (HEX_GROUP.test(p)) out.push(parseInt(p, 16));
    else return null;
  }
  return out;
}

/** Whether text is an IPv6 address (no zone: an overlay address belongs to no one link). */
export function isIpv6(text: string): boolean {
  try {
    parseIp6(text);
    return true;
  } catch {
    return false;
  }
}

export function parseIp6(text: string): Addr6 {
  const t = text.trim();
  const bad = () => new Error(`invalid IPv6 address "${text.slice(0, 60)}"`);
  if (t.length > 45) throw bad();
  const halves = t.split('::');
  if (halves.length > 2) throw bad();
  let all: number[];
  if (halves.length === 2) {
    const head = groups(halves[0], false);
    const tail = groups(halves[1], true);
    // "::" stands for at least one group of zeros.
    if (!head || !tail || head.length + tail.length > 7) throw bad();
    all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  } else {
    const g = groups(t, true);
    if (!g || g.length !== 8) throw bad();
    all = g;
  }
  return all.reduce((a, g) => (a << 16n) | BigInt(g), 0n);
}

export function formatIp6(a: Addr6): string {
  const g = Array.from({ length: 8 }, (_, i) => Number((a >> BigInt(112 - 16 * i)) & 0xffffn));
  // The longest run of at least two zero groups (the first of equal runs) becomes "::".
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(g) : `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

function size(prefix: number): bigint {
  return 1n << (BITS - BigInt(prefix));
}

/** One past the block's last address (2^128 for ::/0). */
export function cidr6End(c: Cidr6): bigint {
  return c.start + size(c.prefix);
}

/** Parses "x:y::z/n"; host bits must be zero unless `allowHost` (then the address is returned as `addr`). */
export function parseCidr6(text: string, allowHost = false): Cidr6 & { addr: Addr6 } {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(text.trim());
  if (!m) throw new Error(`invalid IPv6 CIDR "${text.slice(0, 60)}": expected address/n`);
  const addr = parseIp6(m[1]);
  const prefix = Number(m[2]);
  if (prefix > 128 || (m[2].length > 1 && m[2].startsWith('0')))
    throw new Error(`invalid IPv6 CIDR "${text.slice(0, 60)}": prefix must be 0-128`);
  const start = addr & (MAX ^ (size(prefix) - 1n));
  if (!allowHost && start !== addr)
    throw new Error(
      `invalid IPv6 CIDR "${text.slice(0, 60)}": host bits set (did you mean ${formatIp6(start)}/${prefix}?)`,
    );
  return { start, prefix, addr };
}

export function formatCidr6(c: Cidr6): string {
  return `${formatIp6(c.start)}/${c.prefix}`;
}

export function overlaps6(a: Cidr6, b: Cidr6): boolean {
  return a.start < cidr6End(b) && b.start < cidr6End(a);
}

export function contains6(outer: Cidr6, inner: Cidr6): boolean {
  return inner.start >= outer.start && cidr6End(inner) <= cidr6End(outer);
}

/**
 * The addresses containers may get in a subnet: without the subnet-router anycast address (all host
 * bits zero, RFC 4291 2.6.1) in subnets of /126 and shorter prefixes; /127 and /128 keep every
 * address. IPv6 has no broadcast address.
 */
export function hostRange6(c: Cidr6): [Addr6, Addr6] {
  const end = cidr6End(c);
  return c.prefix >= 127 ? [c.start, end] : [c.start + 1n, end];
}

/** The link-local address the kernel derives from a MAC (EUI-64, addr_gen_mode 0): what a container's interface gets. */
export function linkLocalOf(mac: string): string {
  const b = mac.split(':').map((x) => parseInt(x, 16));
  b[0] ^= 0x02;
  const eui = [b[0], b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]];
  let a = 0xfe80n << 112n;
  for (let i = 0; i < 8; i++) a |= BigInt(eui[i]) << BigInt(8 * (7 - i));
  return formatIp6(a);
}

/** An IPv6 address as one 128-bit hex number: how nftables compares a raw payload field with it. */
export function ip6Hex(text: string): string {
  return `0x${parseIp6(text).toString(16).padStart(32, '0')}`;
}
