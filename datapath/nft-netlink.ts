// nftables state read over netlink, in the call (the addon's netlinkRequest): a table's rule
// counters (one dump, parsed here) and the ruleset's generation. The VXLAN heartbeats read their
// counters every second, and the firewall check looks whether the ruleset changed; through
// the long-lived nft each was a line written, a wake-up of nft and then of the router for its JSON
// answer, and the JSON parsed. The nft session stays the way when the addon is not there.
import { netlinkRequest } from '../native/index.js';
import {
  NLM_F_DUMP,
  NLM_F_DUMP_INTR,
  cString,
  cStringAt,
  eachAttribute,
  netlinkMessages,
  netlinkRequestBytes,
  NETLINK_NETFILTER,
} from '../net/netlink.js';

const NFT = 10 << 8; // NFNL_SUBSYS_NFTABLES, in a message type's high byte
const NFT_MSG_NEWRULE = 6;
const NFT_MSG_GETRULE = 7;
const NFT_MSG_NEWGEN = 15;
const NFT_MSG_GETGEN = 16;
const NFTA_GEN_ID = 1;
/** nfgenmsg: family, version (NFNETLINK_V0), resource id. */
const NFGENMSG_LEN = 4;
const NFTA_RULE_TABLE = 1;
const NFTA_RULE_EXPRESSIONS = 4;
const NFTA_RULE_USERDATA = 7;
const NFTA_LIST_ELEM = 1;
const NFTA_EXPR_NAME = 1;
const NFTA_EXPR_DATA = 2;
const NFTA_COUNTER_PACKETS = 2;
/** In a rule's user data (type-length-value, one byte each): its comment, NUL-terminated. */
const UDATA_RULE_COMMENT = 0;
const WHAT = 'nftables answer';

/** nftables families as netlink numbers them (NFPROTO_*). */
export const NFT_FAMILY = { inet: 1, ip: 2, bridge: 7, ip6: 10, netdev: 5 } as const;
export type NftFamily = keyof typeof NFT_FAMILY;

/** The request: a dump of the rules of one table. */
export function ruleDumpRequest(family: NftFamily, table: string): Buffer {
  return netlinkRequestBytes(NFT | NFT_MSG_GETRULE, NLM_F_DUMP, Buffer.from([NFT_FAMILY[family], 0, 0, 0]), [
    { type: NFTA_RULE_TABLE, value: cString(table) },
  ]);
}

/** A rule's comment, from its user data in b[from, to). */
function commentAt(b: Buffer, from: number, to: number): string | undefined {
  for (let o = from; o + 2 <= to; o += 2 + b[o + 1]) {
    const [type, len] = [b[o], b[o + 1]];
    if (o + 2 + len > to) break;
    if (type === UDATA_RULE_COMMENT) return cStringAt(b, o + 2, o + 2 + len);
  }
  return undefined;
}

class DumpInterrupted extends Error {
  constructor() {
    super('nftables answer: the ruleset changed during the read');
  }
}

/** By rule comment: the packets its rules counted, and how many rules (over all chains) have it. */
export type RuleCounts = Map<string, { packets: number; rules: number }>;

/**
 * Packets counted by the rules of `table` in a dump's answer, summed by rule comment (rules without
 * one left out; a rule's counters summed). Throws on a malformed answer, and on one that the kernel
 * marked interrupted (the ruleset changed during the dump: read again).
 */
export function countersByComment(answer: Buffer, table: string): RuleCounts {
  const sums: RuleCounts = new Map();
  for (const m of netlinkMessages(answer, WHAT)) {
    if (m.flags & NLM_F_DUMP_INTR) throw new DumpInterrupted();
    if (m.type !== (NFT | NFT_MSG_NEWRULE) || m.end - m.start < NFGENMSG_LEN) continue;
    let name: string | undefined;
    let ours = false;
    let [exprsFrom, exprsTo] = [0, 0];
    eachAttribute(answer, m.start + NFGENMSG_LEN, m.end, WHAT, (type, from, to) => {
      if (type === NFTA_RULE_TABLE) ours = cStringAt(answer, from, to) === table;
      else if (type === NFTA_RULE_USERDATA) name = commentAt(answer, from, to);
      else if (type === NFTA_RULE_EXPRESSIONS) [exprsFrom, exprsTo] = [from, to];
    });
    if (!ours || name === undefined) continue;
    let packets = 0;
    eachAttribute(answer, exprsFrom, exprsTo, WHAT, (type, from, to) => {
      if (type !== NFTA_LIST_ELEM) return;
      let counter = false;
      let [dataFrom, dataTo] = [0, 0];
      eachAttribute(answer, from, to, WHAT, (t, f, e) => {
        if (t === NFTA_EXPR_NAME) counter = cStringAt(answer, f, e) === 'counter';
        else if (t === NFTA_EXPR_DATA) [dataFrom, dataTo] = [f, e];
      });
      if (!counter) return;
      eachAttribute(answer, dataFrom, dataTo, WHAT, (t, f, e) => {
        // A 64-bit count in network order (as a number: exact to 2^53 packets).
        if (t === NFTA_COUNTER_PACKETS && e - f === 8)
          packets += answer.readUInt32BE(f) * 2 ** 32 + answer.readUInt32BE(f + 4);
      });
    });
    const sum = sums.get(name) ?? { packets: 0, rules: 0 };
    sum.packets += packets;
    sum.rules++;
    sums.set(name, sum);
  }
  return sums;
}

/**
 * Packets counted by the rules of a table, by comment (see countersByComment), read from the kernel
 * in the call; null when the addon cannot (missing, or built before netlinkRequest). A table that
 * is not there has no rules (the kernel answers a dump filtered by table so); throws the kernel's
 * other errors.
 */
export function readRuleCounters(family: NftFamily, table: string, netns?: string): RuleCounts | null {
  const request = ruleDumpRequest(family, table);
  for (let attempt = 1; ; attempt++) {
    const answer = netlinkRequest(NETLINK_NETFILTER, request, netns);
    if (!answer) return null;
    try {
      return countersByComment(answer, table);
    } catch (err) {
      // A dump in several parts saw the ruleset change (another table's update): read it again.
      if (!(err instanceof DumpInterrupted) || attempt === 3) throw err;
    }
  }
}

/**
 * The ruleset's generation: a number the kernel moves at every change to any table (nft's, and
 * iptables-nft's), in this network namespace or the one at path `netns`; null when the addon cannot
 * read it. Throws the kernel's error.
 */
export function rulesetGeneration(netns?: string): number | null {
  const request = netlinkRequestBytes(NFT | NFT_MSG_GETGEN, 0, Buffer.alloc(NFGENMSG_LEN));
  const answer = netlinkRequest(NETLINK_NETFILTER, request, netns);
  return answer && generationOf(answer);
}

/** The generation in the answer to a GETGEN request. */
export function generationOf(answer: Buffer): number {
  const m = netlinkMessages(answer, WHAT)[0];
  if (m?.type !== (NFT | NFT_MSG_NEWGEN)) throw new Error(`${WHAT}: not a generation`);
  let id: number | null = null;
  eachAttribute(answer, m.start + NFGENMSG_LEN, m.end, WHAT, (type, from, to) => {
    if (type === NFTA_GEN_ID && to - from === 4) id = answer.readUInt32BE(from);
  });
  if (id === null) throw new Error(`${WHAT}: a generation without its number`);
  return id;
}
