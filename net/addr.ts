// IPv4 addresses as unsigned 32-bit numbers, and CIDR blocks over them.

export type Addr = number;

export interface Cidr {
  /** Network address (host bits zero). */
  start: Addr;
  prefix: number;
}

/** Whether text is an IPv4 address in dotted decimal (each part 0-255). */
export function isIpv4(text: string): boolean {
  try {
    parseIp(text);
    return true;
  } catch {
    return false;
  }
}

export function parseIp(text: string): Addr {
  const parts = text.trim().split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new Error(`invalid IPv4 address "${text}"`);
  }
  return parts.reduce((a, p) => a * 256 + Number(p), 0);
}

export function formatIp(a: Addr): string {
  return `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

function cidrSize(c: Cidr): number {
  return 2 ** (32 - c.prefix);
}

export function cidrEnd(c: Cidr): Addr {
  return c.start + cidrSize(c);
}

/** Parses "a.b.c.d/n"; host bits must be zero unless `allowHost` (then the address is returned as `addr`). */
export function parseCidr(text: string, allowHost = false): Cidr & { addr: Addr } {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(text.trim());
  if (!m) throw new Error(`invalid CIDR "${text}": expected a.b.c.d/n`);
  const addr = parseIp(m[1]);
  const prefix = Number(m[2]);
  if (prefix > 32) throw new Error(`invalid CIDR "${text}": prefix longer than 32`);
  const size = 2 ** (32 - prefix);
  const start = addr - (addr % size);
  if (!allowHost && start !== addr)
    throw new Error(`invalid CIDR "${text}": host bits set (did you mean ${formatIp(start)}/${prefix}?)`);
  return { start, prefix, addr };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.start)}/${c.prefix}`;
}

/** True when the two blocks share any address. */
export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.start < cidrEnd(b) && b.start < cidrEnd(a);
}

export function contains(outer: Cidr, inner: Cidr): boolean {
  return inner.start >= outer.start && cidrEnd(inner) <= cidrEnd(outer);
}

/** The addresses containers may get in a subnet: without the network and broadcast addresses (for /30 and larger). */
export function hostRange(c: Cidr): [Addr, Addr] {
  const end = cidrEnd(c);
  return c.prefix >= 31 ? [c.start, end] : [c.start + 1, end - 1];
}
