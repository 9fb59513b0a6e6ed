// Netlink messages as bytes: a request built, an answer cut into its messages and attributes. The
// addon sends and receives (native/index.ts, netlinkRequest); what a message means is its family's
// (datapath/nft-netlink.ts, datapath/link-netlink.ts). Lengths and types are in the host's byte
// order; attribute values in whatever order their family says.
import { endianness } from 'node:os';

/** Netlink protocols (socket(AF_NETLINK, ..., protocol)). */
export const NETLINK_ROUTE = 0;
export const NETLINK_NETFILTER = 12;

const NLM_F_REQUEST = 0x1;
export const NLM_F_DUMP = 0x300;
/** The dump was interrupted by a change: what it returned may be incomplete. */
export const NLM_F_DUMP_INTR = 0x10;
const NLMSG_HDRLEN = 16;
/** Attribute types carry two flag bits (nested, network byte order) above the type. */
const NLA_TYPE_MASK = 0x3fff;

const le = endianness() === 'LE';
/** 16-bit and 32-bit numbers in the host's order. */
const hostU16 = (b: Buffer, o: number): number => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
export const hostU32 = (b: Buffer, o: number): number => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
/** Writes a 32-bit number in the host's order. */
export const writeHostU32 = (b: Buffer, v: number, o: number): number =>
  le ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o);
const align4 = (n: number) => (n + 3) & ~3;

export interface Attribute {
  type: number;
  value: Buffer;
}

/** A string attribute's value (NUL-terminated, as the kernel wants them). */
export const cString = (text: string): Buffer => Buffer.from(`${text}\0`);

/** The string in b[from, to), up to its NUL. */
export function cStringAt(b: Buffer, from: number, to: number): string {
  const nul = b.indexOf(0, from);
  return b.toString('latin1', from, nul < 0 || nul > to ? to : nul);
}

/** A request: the netlink header (sequence number and port left to the addon), the family's header, attributes. */
export function netlinkRequestBytes(type: number, flags: number, header: Buffer, attrs: Attribute[] = []): Buffer {
  const length = NLMSG_HDRLEN + align4(header.length) + attrs.reduce((n, a) => n + align4(4 + a.value.length), 0);
  const b = Buffer.alloc(length);
  const w16 = (v: number, o: number) => (le ? b.writeUInt16LE(v, o) : b.writeUInt16BE(v, o));
  writeHostU32(b, length, 0);
  w16(type, 4);
  w16(NLM_F_REQUEST | flags, 6);
  header.copy(b, NLMSG_HDRLEN);
  let o = NLMSG_HDRLEN + align4(header.length);
  for (const a of attrs) {
    w16(4 + a.value.length, o);
    w16(a.type, o + 2);
    a.value.copy(b, o + 4);
    o += align4(4 + a.value.length);
  }
  return b;
}

// Answers are read once a second or so, so their code is never optimised and runs with cold caches:
// the readers below walk the bytes by offset and make no Buffer, Map or array per attribute.

/** A message of an answer: its type and flags, and where its body (after the netlink header) is. */
export interface NetlinkMessage {
  type: number;
  flags: number;
  /** The family's header, then attributes: answer[start, end). */
  start: number;
  end: number;
}

/** The messages of an answer. `what` names the answer in errors ("nftables answer"). */
export function netlinkMessages(answer: Buffer, what: string): NetlinkMessage[] {
  const out: NetlinkMessage[] = [];
  for (let o = 0; o + NLMSG_HDRLEN <= answer.length;) {
    const len = hostU32(answer, o);
    if (len < NLMSG_HDRLEN || o + len > answer.length) throw new Error(`${what}: a message runs past the end`);
    out.push({ type: hostU16(answer, o + 4), flags: hostU16(answer, o + 6), start: o + NLMSG_HDRLEN, end: o + len });
    o += align4(len);
  }
  return out;
}

/** Calls visit(type, from, to) for each attribute in b[start, end), its value being b[from, to). */
export function eachAttribute(
  b: Buffer,
  start: number,
  end: number,
  what: string,
  visit: (type: number, from: number, to: number) => void,
): void {
  for (let o = start; o + 4 <= end;) {
    const len = hostU16(b, o);
    if (len < 4 || o + len > end) throw new Error(`${what}: an attribute runs past its message`);
    visit(hostU16(b, o + 2) & NLA_TYPE_MASK, o + 4, o + len);
    o += align4(len);
  }
}
