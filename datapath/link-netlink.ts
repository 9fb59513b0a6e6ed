// A link as the kernel describes it over rtnetlink, read in the call (the addon's netlinkRequest):
// what the datapath's checks compare (bridge.ts, linkState), in one request per link (and one more for its
// master's name) where sysfs took a dozen file reads.
import { netlinkRequest } from '../native/index.js';
import {
  cString,
  cStringAt,
  eachAttribute,
  hostU32,
  netlinkMessages,
  netlinkRequestBytes,
  writeHostU32,
  NETLINK_ROUTE,
} from '../net/netlink.js';

const RTM_NEWLINK = 16;
const RTM_GETLINK = 18;
/** ifinfomsg: family, pad, type, index, flags, change. */
const IFINFOMSG_LEN = 16;
const IFF_UP = 0x1;
const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_MASTER = 10;
const IFLA_LINKINFO = 18;
const IFLA_EXT_MASK = 29;
/** Leave the statistics out of the answer: a third of its size, and nothing the checks read. */
const RTEXT_FILTER_SKIP_STATS = 1 << 3;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_SLAVE_KIND = 4;
const IFLA_INFO_SLAVE_DATA = 5;
const IFLA_BRPORT_LEARNING = 8;
const IFLA_BRPORT_NEIGH_SUPPRESS = 32;
const IFLA_BRPORT_ISOLATED = 33;
const WHAT = 'rtnetlink answer';
const ENODEV = 19;

/** A link of this network namespace: what the periodic checks compare. */
export interface LinkState {
  ifindex: number;
  mtu: number;
  address: string;
  up: boolean;
  isBridge: boolean;
  master: string | null;
  /** A bridge port's flags (null: not a port). */
  port: { learning: boolean; neighSuppress: boolean; isolated: boolean } | null;
}

/** The request for one link, by name or by index. */
export function linkRequest(link: string | number): Buffer {
  const header = Buffer.alloc(IFINFOMSG_LEN);
  if (typeof link === 'number') writeHostU32(header, link, 4);
  const mask = Buffer.alloc(4);
  writeHostU32(mask, RTEXT_FILTER_SKIP_STATS, 0);
  return netlinkRequestBytes(RTM_GETLINK, 0, header, [
    ...(typeof link === 'string' ? [{ type: IFLA_IFNAME, value: cString(link) }] : []),
    { type: IFLA_EXT_MASK, value: mask },
  ]);
}

/** What the answer to linkRequest says, with the master's index (its name is another request). */
export function parseLink(answer: Buffer): Omit<LinkState, 'master'> & { masterIndex: number | null } {
  const m = netlinkMessages(answer, WHAT)[0];
  if (m?.type !== RTM_NEWLINK || m.end - m.start < IFINFOMSG_LEN) throw new Error(`${WHAT}: not a link`);
  let [mtu, address, masterIndex, isBridge] = [0, '', null as number | null, false];
  let [slave, slaveFrom, slaveTo] = [false, 0, 0];
  eachAttribute(answer, m.start + IFINFOMSG_LEN, m.end, WHAT, (type, from, to) => {
    if (type === IFLA_MTU && to - from === 4) mtu = hostU32(answer, from);
    else if (type === IFLA_ADDRESS) address = answer.toString('hex', from, to).replace(/(..)(?!$)/g, '$1:');
    else if (type === IFLA_MASTER && to - from === 4) masterIndex = hostU32(answer, from);
    else if (type === IFLA_LINKINFO)
      eachAttribute(answer, from, to, WHAT, (t, f, e) => {
        if (t === IFLA_INFO_KIND) isBridge = cStringAt(answer, f, e) === 'bridge';
        else if (t === IFLA_INFO_SLAVE_KIND) slave = cStringAt(answer, f, e) === 'bridge';
        else if (t === IFLA_INFO_SLAVE_DATA) [slaveFrom, slaveTo] = [f, e];
      });
  });
  let port: LinkState['port'] = null;
  if (slave && slaveTo > slaveFrom) {
    port = { learning: false, neighSuppress: false, isolated: false };
    const p = port;
    eachAttribute(answer, slaveFrom, slaveTo, WHAT, (t, f, e) => {
      const on = e > f && answer[f] === 1;
      if (t === IFLA_BRPORT_LEARNING) p.learning = on;
      else if (t === IFLA_BRPORT_NEIGH_SUPPRESS) p.neighSuppress = on;
      else if (t === IFLA_BRPORT_ISOLATED) p.isolated = on;
    });
  }
  return {
    ifindex: hostU32(answer, m.start + 4),
    mtu,
    address,
    up: (hostU32(answer, m.start + 8) & IFF_UP) === IFF_UP,
    isBridge,
    masterIndex,
    port,
  };
}

/** The kernel's answer for a link; null when there is no such link, undefined when the addon cannot ask. */
function askLink(link: string | number, netns?: string): Buffer | null | undefined {
  try {
    return netlinkRequest(NETLINK_ROUTE, linkRequest(link), netns) ?? undefined;
  } catch (err) {
    if ((err as { errno?: unknown }).errno === ENODEV) return null;
    throw err;
  }
}

/**
 * A link by name, read from the kernel in the call (with its master's name); null when there is no
 * such link; undefined when the addon cannot ask. Throws the kernel's other errors.
 */
export function readLink(dev: string, netns?: string): LinkState | null | undefined {
  const answer = askLink(dev, netns);
  if (!answer) return answer;
  const { masterIndex, ...link } = parseLink(answer);
  return { ...link, master: masterIndex === null ? null : masterName(masterIndex, netns) };
}

/** A master's name by its index (null if it went meanwhile). */
function masterName(index: number, netns?: string): string | null {
  const answer = askLink(index, netns);
  const m = answer ? netlinkMessages(answer, WHAT)[0] : undefined;
  let name: string | null = null;
  if (answer && m && m.end - m.start >= IFINFOMSG_LEN)
    eachAttribute(answer, m.start + IFINFOMSG_LEN, m.end, WHAT, (type, from, to) => {
      if (type === IFLA_IFNAME) name = cStringAt(answer, from, to);
    });
  return name;
}
