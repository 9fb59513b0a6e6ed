// An address family as the allocator and its ring see it: positions (IPv4
// addresses as numbers, IPv6 ones as bigints), their arithmetic, text and wire
// forms, and CIDR blocks over them. Code written against IpFamily<A> runs the
// same for both; only these two objects know which is which.
import { cidrEnd, contains, formatCidr, formatIp, hostRange, overlaps, parseCidr, parseIp, type Addr } from './addr.js';
import {
  cidr6End,
  contains6,
  formatCidr6,
  formatIp6,
  hostRange6,
  overlaps6,
  parseCidr6,
  parseIp6,
  type Addr6,
} from './addr6.js';

/** A position in an address space: an IPv4 address as a number, an IPv6 address as a bigint. */
export type Position = Addr | Addr6;

export interface CidrOf<A extends Position> {
  start: A;
  prefix: number;
}

export interface IpFamily<A extends Position> {
  readonly version: 4 | 6;
  /** Address length in bits. */
  readonly bits: number;
  readonly zero: A;
  readonly one: A;
  readonly two: A;
  add(a: A, b: A): A;
  sub(a: A, b: A): A;
  /** floor(n / 2) */
  half(n: A): A;
  /** a mod n */
  mod(a: A, n: A): A;
  /** A small count (a number of addresses in use) in this family's type. */
  fromCount(n: number): A;
  /** As a number, for display (IPv6 counts past 2^53 are rounded). */
  approx(a: A): number;
  formatIp(a: A): string;
  parseIp(text: string): A;
  parseCidr(text: string, allowHost?: boolean): CidrOf<A> & { addr: A };
  formatCidr(c: CidrOf<A>): string;
  cidrEnd(c: CidrOf<A>): A;
  contains(outer: CidrOf<A>, inner: CidrOf<A>): boolean;
  overlaps(a: CidrOf<A>, b: CidrOf<A>): boolean;
  hostRange(c: CidrOf<A>): [A, A];
  /** The longest prefix a container subnet may have (room for a few hosts). */
  readonly maxSubnetPrefix: number;
  /** The wire form of a position or count: JSON has no integers past 2^53, so IPv6 travels as decimal text. */
  toWire(a: A): number | string;
  /** A position or count from the network; throws unless it is one of this family's. */
  fromWire(v: unknown): A;
}

export const IPV4: IpFamily<Addr> = {
  version: 4,
  bits: 32,
  zero: 0,
  one: 1,
  two: 2,
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  half: (n) => Math.floor(n / 2),
  mod: (a, n) => a % n,
  fromCount: (n) => n,
  approx: (a) => a,
  formatIp,
  parseIp,
  parseCidr,
  formatCidr,
  cidrEnd,
  contains,
  overlaps,
  hostRange,
  maxSubnetPrefix: 30,
  toWire: (a) => a,
  fromWire(v) {
    // 2^32 itself: a count of every IPv4 address, and the end of a range that runs to the last one.
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 2 ** 32) throw new Error('not an IPv4 position');
    return v;
  },
};

const V6_LIMIT = 1n << 128n;

export const IPV6: IpFamily<Addr6> = {
  version: 6,
  bits: 128,
  zero: 0n,
  one: 1n,
  two: 2n,
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  half: (n) => n / 2n,
  mod: (a, n) => a % n,
  fromCount: (n) => BigInt(n),
  approx: (a) => Number(a),
  formatIp: formatIp6,
  parseIp: parseIp6,
  parseCidr: parseCidr6,
  formatCidr: formatCidr6,
  cidrEnd: cidr6End,
  contains: contains6,
  overlaps: overlaps6,
  hostRange: hostRange6,
  maxSubnetPrefix: 126,
  toWire: (a) => a.toString(),
  fromWire(v) {
    if (typeof v !== 'string' || !/^(0|[1-9]\d{0,38})$/.test(v)) throw new Error('not an IPv6 position');
    const n = BigInt(v);
    if (n > V6_LIMIT) throw new Error('not an IPv6 position');
    return n;
  },
};

/** The family of a position's type. */
export function familyOf<A extends Position>(a: A): IpFamily<A> {
  return (typeof a === 'bigint' ? IPV6 : IPV4) as unknown as IpFamily<A>;
}
