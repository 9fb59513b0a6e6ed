// Attaching a container: a veth pair from the bridge into the container's
// network namespace, its end named `ethwe`, with the container's addresses, the
// overlay MTU and a route for the whole allocation range.
import { WeftError } from '../lib/errors.js';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { BRIDGE } from './bridge.js';
import { CommandError, INTERFACE_PRESENT, configureIn, ip, ipBatchIn, ipJson, linkExists } from '../net/command.js';
import { linkLocalOf } from '../net/addr6.js';

/** The container's interface, unless the caller names another (CNI_IFNAME). */
const DEFAULT_IF = 'ethwe';

/**
 * Network namespaces of `cni:ID` containers, as the CNI runtime named them (CNI_NETNS), and of Docker
 * containers (by their 64-hex id: /proc/PID/ns/net of their process): the router learns each at attach
 * and keeps it with the endpoint, so a restarted router finds it again.
 */
const knownNetns = new Map<string, string>();

/** A Docker container's full id, the way weft names Docker containers everywhere. */
export const DOCKER_ID = /^[0-9a-f]{64}$/;
/** An endpoint the Docker network plugin made (`dockerep:ENDPOINT_ID`): Docker plumbs it, weft announces it. */
const PLUGGED = /^dockerep:[0-9a-f]{64}$/;

// Names never start with a dot: "..", "." (or ".x") would be a path out of /run/netns.
const CNI_NETNS_PATH = /^(\/var)?\/run\/netns\/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$|^\/proc\/\d{1,10}\/ns\/net$/;
const CNI_ID = /^cni:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const NETNS_NAME = /^netns:([A-Za-z0-9_][A-Za-z0-9_.-]{0,63})$/;

export function rememberNetns(container: string, path: string): void {
  if (!CNI_ID.test(container) && !DOCKER_ID.test(container))
    throw new WeftError(
      'invalid',
      `a network namespace path is only taken for cni:ID and Docker containers, not "${container}"`,
    );
  if (!CNI_NETNS_PATH.test(path))
    throw new WeftError(
      'invalid',
      `network namespace path "${path}" is not under /run/netns, /var/run/netns or /proc/N/ns/net`,
    );
  knownNetns.set(container, path);
}

export function forgetNetns(container: string): void {
  knownNetns.delete(container);
}

/** Where a container's network namespace is, from `netns:NAME`, `pid:N` or `cni:ID`; a readable error otherwise. */
export function netnsPathOf(container: string): string {
  if (CNI_ID.test(container) || DOCKER_ID.test(container)) {
    const p = knownNetns.get(container);
    if (!p)
      throw new WeftError(
        'not-found',
        `no network namespace known for ${container} (${DOCKER_ID.test(container) ? 'weft attach by Docker name or id gives it' : 'a CNI ADD gives it'})`,
      );
    if (!existsSync(p)) throw new WeftError('not-found', `the network namespace of ${container} (${p}) is gone`);
    return p;
  }
  const ns = NETNS_NAME.exec(container);
  if (ns) {
    const p = `/run/netns/${ns[1]}`;
    if (!existsSync(p)) throw new WeftError('not-found', `no network namespace "${ns[1]}" (looked for ${p})`);
    return p;
  }
  const pid = /^pid:(\d{1,10})$/.exec(container);
  if (pid) {
    const p = `/proc/${pid[1]}/ns/net`;
    if (!existsSync(p)) throw new WeftError('not-found', `no process ${pid[1]}`);
    return p;
  }
  throw new WeftError(
    'invalid',
    `unknown container "${container}": use a Docker container's name or id, netns:NAME, pid:N or cni:ID`,
  );
}

/** A local container's namespace and interface, when weft knows them (a plugged endpoint: once the Docker watcher found it). */
export function containerNamespace(e: {
  container: string;
  netns?: string;
  ifname?: string;
}): { netns: string; ifname: string } | null {
  try {
    return { netns: e.netns ?? netnsPathOf(e.container), ifname: e.ifname ?? DEFAULT_IF };
  } catch {
    return null;
  }
}

/** The inode of a network namespace file: which namespace it is (a path like /proc/PID/ns/net may later name another). */
export function namespaceInode(path: string): number | null {
  try {
    return statSync(path).ino;
  } catch {
    return null;
  }
}

/**
 * Whether the container's network namespace (for a plugged endpoint: its host veth) is still there.
 * With `inode` (recorded at attach), it must still be that namespace: a pid reused by another process
 * after the container died (or while the router was down) is not the container.
 */
export function containerExists(container: string, inode?: number): boolean {
  if (PLUGGED.test(container)) return existsSync(`/sys/class/net/${hostIfName(container)}`);
  try {
    const path = netnsPathOf(container);
    return inode === undefined || namespaceInode(path) === inode;
  } catch {
    return false;
  }
}

/** The host end's name: short (IFNAMSIZ is 16) and stable for a container. */
export function hostIfName(container: string): string {
  return `vw${createHash('sha1').update(container).digest('hex').slice(0, 10)}`;
}

/** A container's veth pair: the host end, and the end handed to the container (named after it). */
export function vethNames(container: string): { hostIf: string; peerIf: string } {
  const hostIf = hostIfName(container);
  return { hostIf, peerIf: `vp${hostIf.slice(2)}` };
}

/**
 * Makes a container's veth pair afresh (a leftover of a half-done attempt goes first) and hands it
 * to `then`; if that fails, the pair goes again.
 */
export async function withNewVeth<T>(
  container: string,
  mtu: number,
  then: (names: { hostIf: string; peerIf: string }) => Promise<T>,
  peer: { mac?: string; netns?: string } = {},
): Promise<T> {
  const names = vethNames(container);
  if (existsSync(`/sys/class/net/${names.hostIf}`)) await ip(['link', 'del', names.hostIf]);
  await ip([
    'link',
    'add',
    names.hostIf,
    'mtu',
    String(mtu),
    'type',
    'veth',
    'peer',
    'name',
    names.peerIf,
    'mtu',
    String(mtu),
    ...(peer.mac ? ['address', peer.mac] : []),
    ...(peer.netns ? ['netns', peer.netns] : []),
  ]);
  // The host end speaks no IPv6 (before it is up: no link-local address, nothing sent into the
  // container that would show it a MAC of the host to route IPv6 through). No IPv6 in the kernel: nothing to do.
  await writeFile(`/proc/sys/net/ipv6/conf/${names.hostIf}/disable_ipv6`, '1').catch(() => undefined);
  try {
    return await then(names);
  } catch (err) {
    await ip(['link', 'del', names.hostIf]).catch(() => undefined);
    throw err;
  }
}

/** Linux bridges take at most this many ports (port numbers 1 to BR_MAX_PORTS - 1); one more fails with EXFULL. */
const BRIDGE_MAX_PORTS = 1023;

/**
 * Puts a container's host-side veth on the bridge and up; a full bridge says so instead of "Exchange
 * full". The port must be bound to its container's addresses first (datapath/port-guard.ts): an
 * unbound container port of weft's drops everything.
 */
export async function joinBridge(hostIf: string, hairpin = false, after: string[] = []): Promise<void> {
  const join = [
    `link set ${hostIf} master ${BRIDGE} up`,
    ...(hairpin ? [`link set dev ${hostIf} type bridge_slave hairpin on`] : []),
  ];
  try {
    await ipBatchIn(undefined, [...join, ...after]);
  } catch (err) {
    // The batch stops at the first line that fails and names it ("Command failed -:N"): past the join,
    // the port is on the bridge, and what failed was only best effort.
    const line = /Command failed -:(\d+)/.exec((err as CommandError).stderr ?? '');
    if (line && Number(line[1]) > join.length) return;
    if (!/Exchange full/i.test((err as Error).message)) throw err;
    throw new WeftError(
      'full',
      `the bridge ${BRIDGE} is full: a Linux bridge takes at most ${BRIDGE_MAX_PORTS} ports, and this host's containers (with weft's own ports) use them all; detach a container or attach this one on another host`,
    );
  }
}

export interface AttachResult {
  mac: string;
  hostIf: string;
}

export interface DnsReach {
  /** The DNS server's address on the bridge, and the bridge's MAC. */
  ip: string;
  bridgeMac: string;
  /** Its IPv6 address there (--ipv6): pinned the same way in dual-stack containers. */
  ip6?: string;
  /** resolv.conf text for named-namespace containers. */
  resolvConf: string;
}

/**
 * The DNS server lives on this host's bridge: a direct route to it from the container, and its MAC
 * fixed, so no ARP for it ever floods over the overlay (every host's bridge has that address).
 */
export async function pinDns(ns: string, ifname: string, dns: { ip: string; bridgeMac: string }): Promise<void> {
  await ip(['route', 'replace', `${dns.ip}/32`, 'dev', ifname], ns);
  await ip(['neigh', 'replace', dns.ip, 'lladdr', dns.bridgeMac, 'dev', ifname, 'nud', 'permanent'], ns);
}

export interface AttachOptions {
  /** The container's interface (CNI_IFNAME); default ethwe. */
  ifname?: string;
  dns?: DnsReach;
  /** The container's default route goes here, and its port hairpins. */
  gateway?: string;
  /** Its IPv6 default route goes here. */
  gateway6?: string;
  /** An interface of that name in the container is an error, even one weft made (CNI ADD's rule). */
  fresh?: boolean;
  /** Best-effort `ip` lines for the host once the port is on the bridge (in the same process). */
  hostLines?: string[];
  /** IPv6 addresses ("ip/prefix"); none: the interface has no IPv6 at all. */
  cidrs6?: string[];
  /** False: an IPv6-only container (no IPv4 address now or before): no IPv4 route to the DNS server either. */
  ipv4?: boolean;
}

/**
 * Attaches a container (idempotent: an existing interface keeps its MAC and gains missing addresses).
 * `bind` is called with the container end's MAC before the host end joins the bridge, so the port is
 * bound to the container's MAC and addresses before its first frame. A new interface costs five
 * commands: the veth pair made with its container end already in the namespace and its MAC chosen
 * here, one `ip -batch` inside the namespace (after a check that no interface has the name, and the
 * sysctls, in the same process), the port's binding, the host end onto the bridge (with
 * `hostLines`), and the announcement once the port forwards.
 */
export async function attachContainer(
  container: string,
  cidrs: string[],
  mtu: number,
  bind: (hostIf: string, mac: string) => Promise<void>,
  opts: AttachOptions = {},
): Promise<AttachResult> {
  const { dns, ifname = DEFAULT_IF, gateway, gateway6, fresh = false, hostLines = [], cidrs6 = [], ipv4 = true } = opts;
  const ipv6 = cidrs6.length > 0;
  // IPv6 addresses are unique by the allocator (and a claim of one in use is refused): no duplicate
  // address detection, whose second of "tentative" would hold up the container's first packets.
  const addrLines = (have: Set<string>) => [
    ...cidrs.filter((c) => !have.has(c)).map((c) => `addr add ${c} dev ${ifname}`),
    ...cidrs6.filter((c) => !have.has(c)).map((c) => `addr add ${c} dev ${ifname} nodad`),
  ];
  const ns = netnsPathOf(container);
  const { hostIf } = vethNames(container);
  const inside = (dev: string, fresh: string[]) => [
    ...fresh,
    `link set ${dev} mtu ${mtu} up`,
    'link set lo up',
    // Each address brings the route for its own subnet (the whole range for the default subnet), and
    // no more: a container in a narrower subnet has no route to the others, which is what isolates
    // subnets. Multicast goes out the interface too, so it floods over the overlay.
    `route replace 224.0.0.0/4 dev ${dev}`,
    // The DNS server lives on this host's bridge: a direct route to it, and its MAC fixed (after the
    // announcement below), so no ARP for it ever floods over the overlay (every host's bridge has that
    // address).
    ...(dns && ipv4 ? [`route replace ${dns.ip}/32 dev ${dev}`] : []),
    ...(dns?.ip6 && ipv6 ? [`route replace ${dns.ip6}/128 dev ${dev}`] : []),
    ...(gateway ? [`route replace default via ${gateway} dev ${dev}`] : []),
    ...(gateway6 ? [`route replace default via ${gateway6} dev ${dev}`] : []),
  ];
  // Without IPv6 addresses, no IPv6 at all (the port drops it anyway; off before the link is up, it
  // gets no link-local address). With them: the link-local address from the MAC (EUI-64, the one the
  // port is bound to, whatever the namespace's default mode), no duplicate address detection, and
  // deaf to router advertisements and redirects (the port drops those from containers; this is the
  // receiving side). arp_notify: a gratuitous ARP when the interface comes up or its address
  // changes, so neighbours that cached an old MAC for the address (a container re-attached) learn
  // the new one at once (ndisc_notify, the same for IPv6).
  const sysctls = (dev: string, resetIpv6 = false): [string, string][] => [
    // IPv6 off and on again: the link-local address is made afresh, from the MAC (and the other
    // IPv6 addresses go, to be added again).
    ...(resetIpv6 ? ([[`net/ipv6/conf/${dev}/disable_ipv6`, '1']] as [string, string][]) : []),
    ...(ipv6
      ? ([
          [`net/ipv6/conf/${dev}/addr_gen_mode`, '0'],
          [`net/ipv6/conf/${dev}/accept_dad`, '0'],
          [`net/ipv6/conf/${dev}/accept_ra`, '0'],
          [`net/ipv6/conf/${dev}/accept_redirects`, '0'],
          [`net/ipv6/conf/${dev}/ndisc_notify`, '1'],
          [`net/ipv6/conf/${dev}/disable_ipv6`, '0'],
        ] as [string, string][])
      : ([[`net/ipv6/conf/${dev}/disable_ipv6`, '1']] as [string, string][])),
    [`net/ipv4/conf/${dev}/arp_notify`, '1'],
  ];
  const conflict = () => new WeftError('conflict', `an interface ${ifname} already exists in ${ns}`);
  // A new interface. configureIn checks in the namespace that the name is free: one there (not weft's,
  // or its pair would have a host end) is a conflict, and the pair goes again.
  const plumbNew = async (): Promise<string> => {
    const mac = randomMac();
    await withNewVeth(
      container,
      mtu,
      async ({ peerIf }) => {
        await configureIn(
          ns,
          sysctls(peerIf),
          inside(ifname, [`link set ${peerIf} name ${ifname}`, ...addrLines(new Set())]),
          ifname,
        );
        // Bound once the name is known to be free (a conflict leaves no binding behind), and still
        // before the host end joins the bridge, where the port's first frame could come from.
        await bind(hostIf, mac);
        await joinBridge(hostIf, gateway !== undefined, hostLines); // failing, the pair goes again: no interface left without a way out
      },
      { mac, netns: ns },
    ).catch((err: Error) => {
      throw err instanceof CommandError && err.exitCode === INTERFACE_PRESENT ? conflict() : err;
    });
    return mac;
  };
  let mac: string;
  if (!existsSync(`/sys/class/net/${hostIf}`)) {
    // No host end: a new attachment (the common case), made without asking first whether the container
    // has an interface of that name (plumbNew's check says).
    mac = await plumbNew();
  } else if (!(await linkExists(ifname, ns))) {
    mac = await plumbNew(); // a host end left over without its container end: made afresh
  } else {
    if (fresh) throw conflict();
    const theirs = (await ipJson<LinkInfo[]>(['link', 'show', 'dev', ifname], ns))[0];
    // The container's interface of that name is not the other end of our veth (ours went elsewhere):
    // the name is someone else's. Ours stays as it is, with the attachment the router knows of.
    if (!isOtherEnd(hostIf, theirs)) throw conflict();
    mac = theirs.address;
    await bind(hostIf, mac);
    await joinBridge(hostIf, gateway !== undefined, hostLines);
    const have = await ipJson<{ addr_info?: { local?: string; prefixlen?: number }[] }[]>(
      ['addr', 'show', 'dev', ifname],
      ns,
    );
    const info = (have[0]?.addr_info ?? []).filter((a) => a.local !== undefined);
    // A link-local address not from the MAC (another addr_gen_mode before, or a MAC changed since):
    // the port is bound to the one from the MAC, so it is made again.
    const resetIpv6 = ipv6 && !info.some((a) => a.local === linkLocalOf(mac));
    const existing = new Set(
      info.filter((a) => !(resetIpv6 && a.local!.includes(':'))).map((a) => `${a.local}/${a.prefixlen}`),
    );
    // IPv6 off and on takes the interface's IPv6 routes with it: those added by hand or by weft (the
    // route to --service-range6) are put back after the addresses.
    const routes6 = resetIpv6
      ? (
          await ipJson<{ dst: string; gateway?: string; protocol?: string }[]>(
            ['-6', 'route', 'show', 'dev', ifname],
            ns,
          )
        )
          .filter((r) => r.protocol === undefined || r.protocol === 'boot' || r.protocol === 'static')
          .map((r) => `route replace ${r.dst}${r.gateway ? ` via ${r.gateway}` : ''} dev ${ifname}`)
      : [];
    await configureIn(ns, sysctls(ifname, resetIpv6), [...inside(ifname, addrLines(existing)), ...routes6]);
  }
  if (dns) {
    const named = /^netns:(.+)$/.exec(container);
    if (named) {
      // `ip netns exec` binds /etc/netns/NAME/* over /etc: containers that are named namespaces use weft's DNS.
      mkdirSync(`/etc/netns/${named[1]}`, { recursive: true });
      writeFileSync(`/etc/netns/${named[1]}/resolv.conf`, dns.resolvConf);
    }
  }
  await announceWhenForwarding(
    ns,
    ifname,
    mac,
    hostIf,
    dns && {
      ...(ipv4 ? { ip: dns.ip } : {}),
      bridgeMac: dns.bridgeMac,
      ...(dns.ip6 && ipv6 ? { ip6: dns.ip6 } : {}),
    },
  );
  return { mac, hostIf };
}

/** A locally administered unicast MAC for a container's interface. */
function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0] & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

interface LinkInfo {
  address: string;
  ifindex: number;
  /** A veth's other end's index, in its own namespace. */
  link_index?: number;
}

/** Whether `link` (in a container) is the other end of the host's veth `hostIf`: each names the other's index. */
function isOtherEnd(hostIf: string, link: LinkInfo): boolean {
  try {
    const read = (f: string) => Number(readFileSync(`/sys/class/net/${hostIf}/${f}`, 'utf8'));
    // Indexes are per namespace: both directions must agree (every veth across namespaces has link_index).
    return read('iflink') === link.ifindex && link.link_index === read('ifindex');
  } catch {
    return false;
  }
}

/**
 * The gratuitous ARP that arp_notify sends when ethwe comes up is usually lost: the bridge notices the
 * host end's carrier a moment later (linkwatch) and drops what arrives before. Containers elsewhere
 * that cached another MAC for a reused address would never learn the new one. So once the bridge
 * forwards on the port, announce again: setting the same MAC makes the kernel send one more. That
 * also flushes the interface's neighbour table, pinned entries too, so the DNS server's entry is
 * pinned in the same batch, after it (and a packet waiting on a neighbour then may be lost: this
 * is done before the container is reported attached, never under its traffic).
 */
export async function announceWhenForwarding(
  ns: string,
  ifname: string,
  mac: string,
  hostIf?: string,
  dns?: { ip?: string; bridgeMac: string; ip6?: string },
): Promise<void> {
  if (hostIf) {
    // The port's STP state from sysfs (3: forwarding): no process per poll.
    for (let i = 0; i < 100; i++) {
      let state = '';
      try {
        state = readFileSync(`/sys/class/net/${hostIf}/brport/state`, 'utf8').trim();
      } catch {
        break; // no such port (yet): announce anyway
      }
      if (state === '3') break;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  await ipBatchIn(ns, [
    `link set dev ${ifname} address ${mac}`,
    ...(dns?.ip ? [`neigh replace ${dns.ip} lladdr ${dns.bridgeMac} dev ${ifname} nud permanent`] : []),
    ...(dns?.ip6 ? [`neigh replace ${dns.ip6} lladdr ${dns.bridgeMac} dev ${ifname} nud permanent`] : []),
  ]).catch(() => undefined);
}

/** Removes the container's ethwe (its veth peer goes with it). A container that is gone needs nothing. */
export async function detachContainer(container: string, ifname = DEFAULT_IF): Promise<void> {
  const hostIf = hostIfName(container);
  let ns: string | null = null;
  try {
    ns = netnsPathOf(container);
  } catch {
    /* the container is gone */
  }
  if (ns)
    await ip(['link', 'del', ifname], ns).catch((err: Error) => {
      if (!/Cannot find device/.test(err.message)) throw err;
    });
  const named = /^netns:(.+)$/.exec(container);
  if (named) rmSync(`/etc/netns/${named[1]}/resolv.conf`, { force: true });
  // The host end went with its peer, unless the container end was gone (moved, or its namespace freed).
  if (existsSync(`/sys/class/net/${hostIf}`)) await ip(['link', 'del', hostIf]);
}
