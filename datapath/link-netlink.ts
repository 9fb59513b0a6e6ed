// A link as the kernel describes it over rtnetlink, read in the call (the addon's netlinkRequest):
// what the 5 s checks compare (bridge.ts, linkState), in one request per link (and one more for its
// master's name) where sysfs took a dozen file reads.
import { netlinkRequest } from '../native/index.js';
import {
  cString,
  hostU32,
  netlinkAttributes,
  netlinkMessages,
  netlinkRequestBytes,
  readCString,
  writeHostU32,
} from '../net/netlink.js';

const NETLINK_ROUTE = 0;
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
  if (m?.type !== RTM_NEWLINK || m.body.length < IFINFOMSG_LEN) throw new Error(`${WHAT}: not a link`);
  const attrs = netlinkAttributes(m.body, IFINFOMSG_LEN, WHAT);
  const mac = attrs.get(IFLA_ADDRESS);
  const mtu = attrs.get(IFLA_MTU);
  const master = attrs.get(IFLA_MASTER);
  const info = attrs.get(IFLA_LINKINFO);
  const linkInfo = info ? netlinkAttributes(info, 0, WHAT) : new Map<number, Buffer>();
  const kind = linkInfo.get(IFLA_INFO_KIND);
  const slaveKind = linkInfo.get(IFLA_INFO_SLAVE_KIND);
  const slaveData = linkInfo.get(IFLA_INFO_SLAVE_DATA);
  let port: LinkState['port'] = null;
  if (slaveKind && readCString(slaveKind) === 'bridge' && slaveData) {
    const p = netlinkAttributes(slaveData, 0, WHAT);
    const flag = (t: number) => p.get(t)?.[0] === 1;
    port = {
      learning: flag(IFLA_BRPORT_LEARNING),
      neighSuppress: flag(IFLA_BRPORT_NEIGH_SUPPRESS),
      isolated: flag(IFLA_BRPORT_ISOLATED),
    };
  }
  return {
    ifindex: hostU32(m.body, 4),
    mtu: mtu?.length === 4 ? hostU32(mtu, 0) : 0,
    address: mac ? [...mac].map((x) => x.toString(16).padStart(2, '0')).join(':') : '',
    up: (hostU32(m.body, 8) & IFF_UP) === IFF_UP,
    isBridge: kind !== undefined && readCString(kind) === 'bridge',
    masterIndex: master?.length === 4 ? hostU32(master, 0) : null,
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
  const name =
    m && m.body.length >= IFINFOMSG_LEN ? netlinkAttributes(m.body, IFINFOMSG_LEN, WHAT).get(IFLA_IFNAME) : undefined;
  return name ? readCString(name) : null;
}
