// OpenFlow 1.3, the part weft speaks as the controller of its OVS bridge:
// HELLO, ERROR, ECHO, FEATURES, FLOW_MOD, flow statistics (MULTIPART type
// FLOW) and BARRIER. Matches are OXM fields (in_port, Ethernet addresses and
// type, the tunnel id, and the Nicira tunnel source/destination addresses of
// both families);
// actions are OUTPUT and SET_FIELD inside one APPLY_ACTIONS instruction. A
// match or action list keeps the order it came in, so what was decoded encodes
// to the same bytes. decodeMessage throws OpenFlowError on anything malformed
// and nothing else: bytes from the switch never reach the rest of the router
// unchecked.
import { formatIp6, parseIp6 } from '../../net/addr6.js';

const OFP_VERSION = 0x04;

const MsgType = {
  Hello: 0,
  Error: 1,
  EchoRequest: 2,
  EchoReply: 3,
  FeaturesRequest: 5,
  FeaturesReply: 6,
  FlowMod: 14,
  MultipartRequest: 18,
  MultipartReply: 19,
  BarrierRequest: 20,
  BarrierReply: 21,
} as const;

export const FlowModCommand = { Add: 0, Modify: 1, ModifyStrict: 2, Delete: 3, DeleteStrict: 4 } as const;

const MULTIPART_FLOW = 1;
const MULTIPART_REPLY_MORE = 1;
const OFPP_ANY = 0xffffffff;
const OFPG_ANY = 0xffffffff;
const OFP_NO_BUFFER = 0xffffffff;
const OFPTT_ALL = 0xff;
const INSTRUCTION_APPLY_ACTIONS = 4;
const INSTRUCTION_GOTO_TABLE = 1;
const ACTION_OUTPUT = 0;
const ACTION_SET_FIELD = 25;
const MAX_LEN = 0xffff;

export class OpenFlowError extends Error {}

/** The OXM fields weft matches on and sets. */
export type FieldName =
  | 'in_port'
  | 'eth_dst'
  | 'eth_src'
  | 'eth_type'
  | 'tunnel_id'
  | 'tun_src'
  | 'tun_dst'
  | 'tun_ipv6_src'
  | 'tun_ipv6_dst';

interface FieldSpec {
  cls: number;
  field: number;
  len: number;
  /** Value bytes to text. */
  text(b: Buffer): string;
  /** Text to value bytes (throws on a malformed value). */
  bytes(t: string): Buffer;
}

const macText = (b: Buffer) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
function macBytes(t: string): Buffer {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(t)) throw new OpenFlowError(`not a MAC address: ${t}`);
  return Buffer.from(t.replaceAll(':', ''), 'hex');
}
const ipText = (b: Buffer) => [...b].join('.');
function ipBytes(t: string): Buffer {
  const parts = t.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255))
    throw new OpenFlowError(`not an IPv4 address: ${t}`);
  return Buffer.from(parts);
}
const ip6Text = (b: Buffer) => formatIp6(BigInt(`0x${b.toString('hex')}`));
function ip6Bytes(t: string): Buffer {
  let a: bigint;
  try {
    a = parseIp6(t);
  } catch {
    throw new OpenFlowError(`not an IPv6 address: ${t}`);
  }
  return Buffer.from(a.toString(16).padStart(32, '0'), 'hex');
}
function uintSpec(len: number): Pick<FieldSpec, 'text' | 'bytes'> {
  return {
    text: (b) => `0x${b.toString('hex').replace(/^0+(?=.)/, '')}`,
    bytes(t) {
      let v: bigint;
      try {
        v = BigInt(t);
      } catch {
        throw new OpenFlowError(`not a number: ${t}`);
      }
      if (v < 0n || v >= 1n << BigInt(len * 8)) throw new OpenFlowError(`out of range for ${len} bytes: ${t}`);
      return Buffer.from(v.toString(16).padStart(len * 2, '0'), 'hex');
    },
  };
}

// OXM class 0x8000 is OpenFlow's basic class; 0x0001 is Nicira's (NXM_1), where OVS keeps the tunnel addresses.
const FIELDS: Record<FieldName, FieldSpec> = {
  in_port: {
    cls: 0x8000,
    field: 0,
    len: 4,
    text: (b) => String(b.readUInt32BE(0)),
    bytes: (t) => uintSpec(4).bytes(t),
  },
  eth_dst: { cls: 0x8000, field: 3, len: 6, text: macText, bytes: macBytes },
  eth_src: { cls: 0x8000, field: 4, len: 6, text: macText, bytes: macBytes },
  eth_type: { cls: 0x8000, field: 5, len: 2, ...uintSpec(2) },
  tunnel_id: { cls: 0x8000, field: 38, len: 8, ...uintSpec(8) },
  tun_src: { cls: 0x0001, field: 31, len: 4, text: ipText, bytes: ipBytes },
  tun_dst: { cls: 0x0001, field: 32, len: 4, text: ipText, bytes: ipBytes },
  // An IPv6 underlay: the tunnel's outer addresses of that family (NXM_NX_TUN_IPV6_SRC and _DST).
  tun_ipv6_src: { cls: 0x0001, field: 109, len: 16, text: ip6Text, bytes: ip6Bytes },
  tun_ipv6_dst: { cls: 0x0001, field: 110, len: 16, text: ip6Text, bytes: ip6Bytes },
};
const FIELD_BY_KEY = new Map(Object.entries(FIELDS).map(([name, s]) => [`${s.cls}:${s.field}`, name as FieldName]));

/** One OXM field: a value, and a mask when the match is masked ("ff:..." style text of the same kind). */
export interface MatchField {
  field: FieldName;
  value: string;
  mask?: string;
}

/** `goto_table` is an instruction of its own on the wire (after the APPLY_ACTIONS of the others): it comes last. */
type Action =
  | { type: 'output'; port: number }
  | { type: 'set_field'; field: FieldName; value: string }
  | { type: 'goto_table'; table: number };

export interface FlowSpec {
  cookie: bigint;
  priority: number;
  tableId: number;
  match: MatchField[];
  /** The actions of one APPLY_ACTIONS instruction; empty: drop. */
  actions: Action[];
}

export interface FlowStats extends FlowSpec {
  packets: bigint;
  bytes: bigint;
  durationSec: number;
  durationNsec: number;
  idleTimeout: number;
  hardTimeout: number;
  flags: number;
}

export type Message =
  | { type: 'hello'; xid: number }
  | { type: 'error'; xid: number; errType: number; code: number; data: Buffer }
  | { type: 'echo_request'; xid: number; data: Buffer }
  | { type: 'echo_reply'; xid: number; data: Buffer }
  | { type: 'features_request'; xid: number }
  | { type: 'features_reply'; xid: number; datapathId: bigint; nTables: number }
  | {
      type: 'flow_mod';
      xid: number;
      command: number;
      cookieMask: bigint;
      outPort: number;
      flags: number;
      flow: FlowSpec;
    }
  | {
      type: 'flow_stats_request';
      xid: number;
      tableId: number;
      cookie: bigint;
      cookieMask: bigint;
      match: MatchField[];
    }
  | { type: 'flow_stats_reply'; xid: number; more: boolean; flows: FlowStats[] }
  | { type: 'barrier_request'; xid: number }
  | { type: 'barrier_reply'; xid: number }
  /** Anything else the switch may send (port status, other multipart replies ...): passed over. */
  | { type: 'other'; xid: number; msgType: number };

// ---------------------------------------------------------------- encoding

const pad8 = (n: number) => (8 - (n % 8)) % 8;

function oxm(f: MatchField | { field: FieldName; value: string }, masked: boolean, mask?: string): Buffer {
  const spec = FIELDS[f.field];
  const value = spec.bytes(f.value);
  const m = masked ? spec.bytes(mask!) : null;
  const h = Buffer.alloc(4);
  h.writeUInt16BE(spec.cls, 0);
  h[2] = (spec.field << 1) | (m ? 1 : 0);
  h[3] = spec.len * (m ? 2 : 1);
  return Buffer.concat(m ? [h, value, m] : [h, value]);
}

function encodeMatch(match: MatchField[]): Buffer {
  const fields = Buffer.concat(match.map((f) => oxm(f, f.mask !== undefined, f.mask)));
  const h = Buffer.alloc(4);
  h.writeUInt16BE(1, 0); // OFPMT_OXM
  h.writeUInt16BE(4 + fields.length, 2);
  return Buffer.concat([h, fields, Buffer.alloc(pad8(4 + fields.length))]);
}

function encodeAction(a: Exclude<Action, { type: 'goto_table' }>): Buffer {
  if (a.type === 'output') {
    const b = Buffer.alloc(16);
    b.writeUInt16BE(ACTION_OUTPUT, 0);
    b.writeUInt16BE(16, 2);
    b.writeUInt32BE(a.port, 4);
    b.writeUInt16BE(0, 8); // max_len: only for the controller port, which weft never outputs to
    return b;
  }
  const field = oxm({ field: a.field, value: a.value }, false);
  const len = 4 + field.length + pad8(4 + field.length);
  const h = Buffer.alloc(4);
  h.writeUInt16BE(ACTION_SET_FIELD, 0);
  h.writeUInt16BE(len, 2);
  return Buffer.concat([h, field, Buffer.alloc(len - 4 - field.length)]);
}

function encodeInstructions(all: Action[]): Buffer {
  const actions = all.filter((a) => a.type !== 'goto_table');
  const goto = all.filter((a) => a.type === 'goto_table');
  if (goto.length > 1 || (goto.length === 1 && all[all.length - 1] !== goto[0]))
    throw new OpenFlowError('goto_table comes once, last');
  const out: Buffer[] = [];
  if (actions.length > 0) {
    const body = Buffer.concat(actions.map((a) => encodeAction(a as Exclude<Action, { type: 'goto_table' }>)));
    const h = Buffer.alloc(8);
    h.writeUInt16BE(INSTRUCTION_APPLY_ACTIONS, 0);
    h.writeUInt16BE(8 + body.length, 2);
    out.push(h, body);
  }
  if (goto.length === 1) {
    const g = Buffer.alloc(8);
    g.writeUInt16BE(INSTRUCTION_GOTO_TABLE, 0);
    g.writeUInt16BE(8, 2);
    g[4] = goto[0].table;
    out.push(g);
  }
  return Buffer.concat(out);
}

function header(type: number, xid: number, body: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h[0] = OFP_VERSION;
  h[1] = type;
  h.writeUInt16BE(8 + body.length, 2);
  h.writeUInt32BE(xid >>> 0, 4);
  if (8 + body.length > MAX_LEN)
    throw new OpenFlowError(`message of ${8 + body.length} bytes is over OpenFlow's 65535`);
  return Buffer.concat([h, body]);
}

export function encodeMessage(m: Message): Buffer {
  switch (m.type) {
    case 'hello': {
      // A version bitmap element saying "1.3 only", as OVS itself sends.
      const b = Buffer.alloc(8);
      b.writeUInt16BE(1, 0);
      b.writeUInt16BE(8, 2);
      b.writeUInt32BE(1 << OFP_VERSION, 4);
      return header(MsgType.Hello, m.xid, b);
    }
    case 'error': {
      const b = Buffer.alloc(4);
      b.writeUInt16BE(m.errType, 0);
      b.writeUInt16BE(m.code, 2);
      return header(MsgType.Error, m.xid, Buffer.concat([b, m.data]));
    }
    case 'echo_request':
      return header(MsgType.EchoRequest, m.xid, m.data);
    case 'echo_reply':
      return header(MsgType.EchoReply, m.xid, m.data);
    case 'features_request':
      return header(MsgType.FeaturesRequest, m.xid, Buffer.alloc(0));
    case 'features_reply': {
      const b = Buffer.alloc(24);
      b.writeBigUInt64BE(m.datapathId, 0);
      b[12] = m.nTables;
      return header(MsgType.FeaturesReply, m.xid, b);
    }
    case 'flow_mod': {
      const f = m.flow;
      const b = Buffer.alloc(40);
      b.writeBigUInt64BE(f.cookie, 0);
      b.writeBigUInt64BE(m.cookieMask, 8);
      b[16] = f.tableId;
      b[17] = m.command;
      b.writeUInt16BE(0, 18); // idle timeout
      b.writeUInt16BE(0, 20); // hard timeout
      b.writeUInt16BE(f.priority, 22);
      b.writeUInt32BE(OFP_NO_BUFFER, 24);
      b.writeUInt32BE(m.outPort, 28);
      b.writeUInt32BE(OFPG_ANY, 32);
      b.writeUInt16BE(m.flags, 36);
      return header(MsgType.FlowMod, m.xid, Buffer.concat([b, encodeMatch(f.match), encodeInstructions(f.actions)]));
    }
    case 'flow_stats_request': {
      const mp = Buffer.alloc(8);
      mp.writeUInt16BE(MULTIPART_FLOW, 0);
      const b = Buffer.alloc(32);
      b[0] = m.tableId;
      b.writeUInt32BE(OFPP_ANY, 4);
      b.writeUInt32BE(OFPG_ANY, 8);
      b.writeBigUInt64BE(m.cookie, 16);
      b.writeBigUInt64BE(m.cookieMask, 24);
      return header(MsgType.MultipartRequest, m.xid, Buffer.concat([mp, b, encodeMatch(m.match)]));
    }
    case 'flow_stats_reply': {
      const mp = Buffer.alloc(8);
      mp.writeUInt16BE(MULTIPART_FLOW, 0);
      mp.writeUInt16BE(m.more ? MULTIPART_REPLY_MORE : 0, 2);
      const entries = m.flows.map((f) => {
        const match = encodeMatch(f.match);
        const ins = encodeInstructions(f.actions);
        const b = Buffer.alloc(48);
        b.writeUInt16BE(48 + match.length + ins.length, 0);
        b[2] = f.tableId;
        b.writeUInt32BE(f.durationSec, 4);
        b.writeUInt32BE(f.durationNsec, 8);
        b.writeUInt16BE(f.priority, 12);
        b.writeUInt16BE(f.idleTimeout, 14);
        b.writeUInt16BE(f.hardTimeout, 16);
        b.writeUInt16BE(f.flags, 18);
        b.writeBigUInt64BE(f.cookie, 24);
        b.writeBigUInt64BE(f.packets, 32);
        b.writeBigUInt64BE(f.bytes, 40);
        return Buffer.concat([b, match, ins]);
      });
      return header(MsgType.MultipartReply, m.xid, Buffer.concat([mp, ...entries]));
    }
    case 'barrier_request':
      return header(MsgType.BarrierRequest, m.xid, Buffer.alloc(0));
    case 'barrier_reply':
      return header(MsgType.BarrierReply, m.xid, Buffer.alloc(0));
    case 'other':
      throw new OpenFlowError(`cannot encode message type ${m.msgType}`);
  }
}

// ---------------------------------------------------------------- decoding

function need(cond: boolean, what: string): asserts cond {
  if (!cond) throw new OpenFlowError(what);
}

function decodeOxm(b: Buffer, at: number, end: number): { f: MatchField; next: number } {
  need(at + 4 <= end, 'OXM header truncated');
  const cls = b.readUInt16BE(at);
  const fieldByte = b[at + 2];
  const len = b[at + 3];
  const next = at + 4 + len;
  need(next <= end, 'OXM value truncated');
  const hasMask = (fieldByte & 1) === 1;
  const name = FIELD_BY_KEY.get(`${cls}:${fieldByte >> 1}`);
  need(name !== undefined, `OXM field ${cls.toString(16)}:${fieldByte >> 1} is not one weft uses`);
  const spec = FIELDS[name];
  need(len === spec.len * (hasMask ? 2 : 1), `OXM ${name} has length ${len}`);
  const value = spec.text(b.subarray(at + 4, at + 4 + spec.len));
  const f: MatchField = hasMask
    ? { field: name, value, mask: spec.text(b.subarray(at + 4 + spec.len, next)) }
    : { field: name, value };
  return { f, next };
}

/** An ofp_match at `at`; returns the fields and the offset after its padding. */
function decodeMatch(b: Buffer, at: number, end: number): { match: MatchField[]; next: number } {
  need(at + 4 <= end, 'match truncated');
  need(b.readUInt16BE(at) === 1, 'match is not OXM');
  const len = b.readUInt16BE(at + 2);
  need(len >= 4 && at + len <= end, 'match length is wrong');
  const match: MatchField[] = [];
  let p = at + 4;
  while (p < at + len) {
    const { f, next } = decodeOxm(b, p, at + len);
    match.push(f);
    p = next;
  }
  const next = at + len + pad8(len);
  need(next <= end, 'match padding truncated');
  return { match, next };
}

function decodeActions(b: Buffer, at: number, end: number): Action[] {
  const out: Action[] = [];
  let p = at;
  while (p < end) {
    need(p + 4 <= end, 'action header truncated');
    const type = b.readUInt16BE(p);
    const len = b.readUInt16BE(p + 2);
    need(len >= 8 && len % 8 === 0 && p + len <= end, 'action length is wrong');
    if (type === ACTION_OUTPUT) {
      need(len === 16, 'output action length is wrong');
      out.push({ type: 'output', port: b.readUInt32BE(p + 4) });
    } else if (type === ACTION_SET_FIELD) {
      const { f, next } = decodeOxm(b, p + 4, p + len);
      need(f.mask === undefined && next <= p + len, 'set_field is malformed');
      out.push({ type: 'set_field', field: f.field, value: f.value });
    } else {
      throw new OpenFlowError(`action type ${type} is not one weft uses`);
    }
    p += len;
  }
  return out;
}

function decodeInstructions(b: Buffer, at: number, end: number): Action[] {
  const out: Action[] = [];
  let p = at;
  while (p < end) {
    need(p + 8 <= end, 'instruction truncated');
    const type = b.readUInt16BE(p);
    const len = b.readUInt16BE(p + 2);
    need(len >= 8 && p + len <= end, 'instruction length is wrong');
    if (type === INSTRUCTION_GOTO_TABLE) {
      need(len === 8, 'goto_table instruction length is wrong');
      out.push({ type: 'goto_table', table: b[p + 4] });
    } else {
      need(type === INSTRUCTION_APPLY_ACTIONS, `instruction type ${type} is not one weft uses`);
      out.push(...decodeActions(b, p + 8, p + len));
    }
    p += len;
  }
  return out;
}

/** Length of the first message in `b`, or null when the header is not all there yet. Throws on a bad header. */
export function messageLength(b: Buffer): number | null {
  if (b.length < 8) return null;
  need(b[0] === OFP_VERSION, `OpenFlow version ${b[0]}, not 1.3`);
  const len = b.readUInt16BE(2);
  need(len >= 8, `message length ${len} is below the header`);
  return len;
}

export function decodeMessage(b: Buffer): Message {
  const len = messageLength(b);
  need(len !== null && b.length === len, 'message length does not match its header');
  const type = b[1];
  const xid = b.readUInt32BE(4);
  const body = b.subarray(8);
  switch (type) {
    case MsgType.Hello:
      return { type: 'hello', xid };
    case MsgType.Error:
      need(body.length >= 4, 'error truncated');
      return {
        type: 'error',
        xid,
        errType: body.readUInt16BE(0),
        code: body.readUInt16BE(2),
        data: Buffer.from(body.subarray(4)),
      };
    case MsgType.EchoRequest:
      return { type: 'echo_request', xid, data: Buffer.from(body) };
    case MsgType.EchoReply:
      return { type: 'echo_reply', xid, data: Buffer.from(body) };
    case MsgType.FeaturesRequest:
      return { type: 'features_request', xid };
    case MsgType.FeaturesReply:
      need(body.length >= 24, 'features reply truncated');
      return { type: 'features_reply', xid, datapathId: body.readBigUInt64BE(0), nTables: body[12] };
    case MsgType.FlowMod: {
      need(body.length >= 40, 'flow_mod truncated');
      const { match, next } = decodeMatch(body, 40, body.length);
      const flow: FlowSpec = {
        cookie: body.readBigUInt64BE(0),
        tableId: body[16],
        priority: body.readUInt16BE(22),
        match,
        actions: decodeInstructions(body, next, body.length),
      };
      return {
        type: 'flow_mod',
        xid,
        command: body[17],
        cookieMask: body.readBigUInt64BE(8),
        outPort: body.readUInt32BE(28),
        flags: body.readUInt16BE(36),
        flow,
      };
    }
    case MsgType.MultipartRequest: {
      need(body.length >= 8, 'multipart request truncated');
      if (body.readUInt16BE(0) !== MULTIPART_FLOW) return { type: 'other', xid, msgType: type };
      need(body.length >= 40, 'flow stats request truncated');
      const { match } = decodeMatch(body, 40, body.length);
      return {
        type: 'flow_stats_request',
        xid,
        tableId: body[8],
        cookie: body.readBigUInt64BE(24),
        cookieMask: body.readBigUInt64BE(32),
        match,
      };
    }
    case MsgType.MultipartReply: {
      need(body.length >= 8, 'multipart reply truncated');
      if (body.readUInt16BE(0) !== MULTIPART_FLOW) return { type: 'other', xid, msgType: type };
      const more = (body.readUInt16BE(2) & MULTIPART_REPLY_MORE) !== 0;
      const flows: FlowStats[] = [];
      let p = 8;
      while (p < body.length) {
        need(p + 48 <= body.length, 'flow stats entry truncated');
        const elen = body.readUInt16BE(p);
        need(elen >= 56 && p + elen <= body.length, 'flow stats entry length is wrong');
        const end = p + elen;
        const { match, next } = decodeMatch(body, p + 48, end);
        flows.push({
          tableId: body[p + 2],
          durationSec: body.readUInt32BE(p + 4),
          durationNsec: body.readUInt32BE(p + 8),
          priority: body.readUInt16BE(p + 12),
          idleTimeout: body.readUInt16BE(p + 14),
          hardTimeout: body.readUInt16BE(p + 16),
          flags: body.readUInt16BE(p + 18),
          cookie: body.readBigUInt64BE(p + 24),
          packets: body.readBigUInt64BE(p + 32),
          bytes: body.readBigUInt64BE(p + 40),
          match,
          actions: decodeInstructions(body, next, end),
        });
        p = end;
      }
      return { type: 'flow_stats_reply', xid, more, flows };
    }
    case MsgType.BarrierRequest:
      return { type: 'barrier_request', xid };
    case MsgType.BarrierReply:
      return { type: 'barrier_reply', xid };
    default:
      return { type: 'other', xid, msgType: type };
  }
}

/** A field's value in the text form decoding gives (so built and decoded flows compare equal). */
export function normalizeValue(field: FieldName, value: string): string {
  const spec = FIELDS[field];
  return spec.text(spec.bytes(value));
}

/** A flow as one line of text (ovs-ofctl's style), the identity used to compare flows. */
export function flowText(f: Pick<FlowSpec, 'priority' | 'match' | 'actions'>): string {
  const match = f.match.map((m) => `${m.field}=${m.value}${m.mask ? `/${m.mask}` : ''}`).sort();
  const actions = f.actions.map((a) =>
    a.type === 'output'
      ? `output:${a.port}`
      : a.type === 'goto_table'
        ? `goto_table:${a.table}`
        : `set_field:${a.value}->${a.field}`,
  );
  return `priority=${[f.priority, ...match].join(',')} actions=${actions.length > 0 ? actions.join(',') : 'drop'}`;
}

export { OFPP_ANY, OFPTT_ALL };
