// Router options, shared by the daemon and `weft launch`. Every option can also
// be given as an environment variable WEFT_<OPTION> (WEFT_DATA_DIR, WEFT_PORT ...).
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { Command, Option } from 'commander';
// The peer-name helpers alone: the CLI loads this file and must not load the mesh.
import { DEFAULT_DATA_DIR } from './contract.js';
import { parsePeerName, type PeerName } from '../mesh/peer-name.js';
import { parseCidr } from '../net/addr.js';
import { parseCidr6 } from '../net/addr6.js';
import { parseAddress, parseListen } from '../net/host-port.js';

export interface RouterOptions {
  dataDir: string;
  port: number;
  host: string;
  name?: PeerName;
  nickname: string;
  password: string | null;
  connLimit: number;
  discovery: boolean;
  httpAddr: string;
  logLevel: string;
  gossipInterval: number;
  heartbeatInterval: number;
  ipallocRange: string;
  /** Where service VIPs come from; must not overlap ipallocRange. */
  serviceRange: string;
  /** With ipv6: where each service's IPv6 VIP is (at its IPv4 VIP's offset). */
  serviceRange6: string;
  ipallocDefaultSubnet?: string;
  /** IPv6 addresses come from here (a ring of their own, started when first asked for). */
  ipallocRange6: string;
  ipallocDefaultSubnet6?: string;
  /** Containers get an IPv6 address too (from ipallocRange6), and the overlay carries IPv6. */
  ipv6: boolean;
  /** With ipv6: the host's exposed IPv6 subnets are masqueraded when they leave (routed otherwise). */
  ipv6Nat: boolean;
  ipallocInit: string;
  ipallocTimeout: number;
  datapath: 'fastdp' | 'ovs' | 'none';
  /** The OVS datapath: OVSDB's socket (unix:PATH), weft's bridge there, and its datapath type (default: system when the kernel has the module). */
  ovsdb: string;
  ovsBridge: string;
  ovsDatapath?: 'system' | 'netdev';
  mtu?: number;
  dns: boolean;
  dnsDomain: string;
  dnsTtl: number;
  dnsListenAddress?: string;
  resolvConf: string;
  /** Use the kernel VXLAN path where it works (--no-fastdp: sleeve only). */
  fastdp: boolean;
  /** Run the userspace sleeve (--no-sleeve). */
  sleeve: boolean;
  /** Peers on these underlay networks are not encrypted even with a password. */
  trustedSubnets: string[];
  /** Where Prometheus metrics are served ("" for nowhere). */
  metricsAddr: string;
  /** The Docker engine to follow ("" for none). */
  dockerApi: string;
  /** Where the Docker network plugin listens ("" for no plugin). */
  dockerPlugin: string;
  peers: string[];
}

const DEFAULT_HTTP_ADDR = '127.0.0.1:6784';

/** Parses "500ms", "2s", "5m" or a plain number of seconds. */
function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!m) throw new Error(`invalid duration "${text}": use e.g. 500ms, 2s, 5m`);
  const n = Number(m[1]);
  const ms = m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000;
  if (ms < 10) throw new Error(`duration "${text}" is too short (at least 10ms)`);
  return Math.round(ms);
}

function int(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new Error(`--${name} must be a whole number from ${min} to ${max}, not "${v}"`);
    return n;
  };
}

function ovsBridgeName(v: string): string {
  // Also a network device name (its internal port): at most 15 characters; not weft's Linux bridge.
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(v) || v === 'weft')
    throw new Error(
      `--ovs-bridge "${v}": 1 to 15 letters, digits, "_", "." or "-", and not "weft" (weft's Linux bridge)`,
    );
  return v;
}

function cidrList(v: string): string[] {
  const out = v
    .split(',')
    .map((c) => c.trim())
    .filter((c) => c !== '');
  for (const c of out) {
    try {
      if (c.includes(':')) parseCidr6(c);
      else parseCidr(c);
    } catch (err) {
      throw new Error(`--trusted-subnets: ${(err as Error).message}`);
    }
  }
  return out;
}

/** A listen address option: checked now, so a typo is a clear error at start, not a crash later. */
function listenAddr(name: string, allowNone: boolean, allowUnix: boolean, fallback?: string) {
  return (v: string): string => {
    if (allowNone && v === '') return v;
    // An empty variable (WEFT_HTTP_ADDR= is also the CLI's "not set") means the default.
    if (v === '' && fallback !== undefined) return fallback;
    if (allowUnix && v.startsWith('unix:')) {
      if (!v.startsWith('unix:/'))
        throw new Error(`--${name} ${v}: a unix socket needs an absolute path (unix:/run/weft/api.sock)`);
      return v;
    }
    parseListen(v, `--${name}`);
    return v;
  };
}

function duration(v: string): number {
  return parseDuration(v);
}

/** --data-dir -> WEFT_DATA_DIR, --no-discovery -> WEFT_NO_DISCOVERY (set to anything: discovery off). */
function envName(long: string): string {
  return `WEFT_${long.replace(/^--/, '').replaceAll('-', '_').toUpperCase()}`;
}

/** The router's options, as commander Options. `weft launch` adds the same ones. */
function routerOptions(): Option[] {
  const o = (flags: string, desc: string) => {
    const opt = new Option(flags, desc);
    return opt.env(envName(opt.long!));
  };
  return [
    o('--data-dir <dir>', 'where identity, state, pid and log files live').default(DEFAULT_DATA_DIR),
    o('--port <n>', 'TCP port of the mesh')
      .default(6783)
      .argParser(int('port', 1, 65535)),
    o('--host <addr>', 'address to listen on for mesh connections').default('0.0.0.0'),
    o(
      '--name <peer-name>',
      'peer name (aa:bb:cc:dd:ee:ff); default: kept in the data dir, random at first start',
    ).argParser((v) => parsePeerName(v)),
    o('--nickname <name>', 'human-readable name shown in status').default(hostname()),
    o(
      '--password <secret>',
      'shared mesh password (prefer WEFT_PASSWORD or --password-file: arguments are visible to other users)',
    ),
    o('--password-file <path>', 'read the mesh password from this file'),
    o(
      '--peers-file <path>',
      'also connect to the peers listed in this file (addresses separated by spaces or lines, # comments): a Kubernetes ConfigMap, a systemd EnvironmentFile',
    ),
    o('--conn-limit <n>', 'at most this many connections (0: no limit); a peer is never locked out')
      .default(200)
      .argParser(int('conn-limit', 0, 100_000)),
    o('--no-discovery', 'do not connect to peers learnt from others'),
    o(
      '--http-addr <ip:port|unix:path>',
      'address of the local HTTP API; unix:/PATH serves it on a socket only root can use (no TCP at all)',
    )
      .default(DEFAULT_HTTP_ADDR)
      .argParser(listenAddr('http-addr', false, true, DEFAULT_HTTP_ADDR)),
    o(
      '--metrics-addr <ip:port>',
      'where Prometheus metrics are served, at /metrics (":6782" or "0.0.0.0:6782": every address, for a scraper elsewhere; "" turns them off)',
    )
      .default('127.0.0.1:6782')
      .argParser(listenAddr('metrics-addr', true, false)),
    o('--log-level <level>', 'debug, info, warn or error').default('info').choices(['debug', 'info', 'warn', 'error']),
    o('--gossip-interval <duration>', 'period of the anti-entropy exchange').default(30_000, '30s').argParser(duration),
    o('--heartbeat-interval <duration>', 'heartbeat period; a connection silent for three periods is closed')
      .default(10_000, '10s')
      .argParser(duration),
    o('--ipalloc-range <cidr>', 'the range container addresses come from').default('10.32.0.0/12'),
    o(
      '--service-range <cidr>',
      'the range service VIPs come from (must not overlap --ipalloc-range; the same on every peer)',
    ).default('10.96.0.0/16'),
    o(
      '--service-range6 <cidr>',
      "with --ipv6: the range services' IPv6 VIPs come from, each at its IPv4 VIP's offset (at least as large as --service-range; the same on every peer)",
    ).default('fd77:6566:7401::/112'),
    o('--ipalloc-default-subnet <cidr>', 'subnet for allocations that name none (default: the whole range)'),
    o(
      '--ipalloc-range6 <cidr>',
      'the range IPv6 container addresses come from (the same on every peer; a ring of its own, started when first asked for)',
    ).default('fd77:6566:7400::/48'),
    o('--ipalloc-default-subnet6 <cidr>', 'IPv6 subnet for allocations that name none (default: the whole range6)'),
    o(
      '--ipv6',
      'dual-stack containers: each attach gives an IPv6 address from --ipalloc-range6 too (weft attach --ipv4-only: not), and the overlay carries IPv6 under the same security groups',
    ),
    o(
      '--ipv6-nat',
      'with --ipv6: IPv6 from exposed subnets (weft expose, CNI gateways) leaves the host masqueraded as its own address (NAT66); without it, routed (the network must route the subnet to this host)',
    ),
    o(
      '--ipalloc-init <mode>',
      'how the ring starts: consensus[=N] (N initial peers; default: the peers given + 1), seed=NAME,..., or observer',
    ).default('consensus'),
    o(
      '--datapath <kind>',
      'fastdp (kernel VXLAN), ovs (VXLAN through an Open vSwitch bridge weft controls), or none (control plane only: no bridge, no attach)',
    )
      .default('fastdp')
      .choices(['fastdp', 'ovs', 'none']),
    o(
      '--ovsdb <target>',
      'with --datapath ovs: where ovsdb-server listens (unix:PATH); the OpenFlow socket for weft goes next to it',
    ).default('unix:/var/run/openvswitch/db.sock'),
    o('--ovs-bridge <name>', 'with --datapath ovs: the OVS bridge weft makes and controls')
      .default('weft-ovs')
      .argParser(ovsBridgeName),
    o(
      '--ovs-datapath <type>',
      'with --datapath ovs: system (the kernel module) or netdev (userspace); default: system when the kernel has the openvswitch module',
    ).choices(['system', 'netdev']),
    o('--no-fastdp', 'never use the kernel VXLAN path: all traffic goes through the sleeve'),
    o('--no-sleeve', 'do not run the userspace sleeve (peers without a working VXLAN path get no traffic)'),
    o(
      '--trusted-subnets <cidrs>',
      'comma-separated underlay networks (IPv4 or IPv6) whose peers need no encryption (with a password, others use the encrypted sleeve)',
    )
      .default([], 'none')
      .argParser(cidrList),
    o(
      '--mtu <n>',
      'overlay MTU (default: the underlay MTU minus 50 for VXLAN, or 70 with an IPv6 underlay: --host IPv6 or ::)',
    ).argParser(int('mtu', 576, 65000)),
    o('--no-dns', 'do not run the DNS server'),
    o('--dns-domain <domain>', 'the domain weft answers for').default('weft.local.'),
    o('--dns-ttl <seconds>', "TTL of weft's answers")
      .default(1)
      .argParser(int('dns-ttl', 0, 86400)),
    o(
      '--dns-listen-address <ip:port>',
      'where the DNS server listens (default: 169.254.83.83:53 on the weft bridge, reachable from attached containers)',
    ).argParser(listenAddr('dns-listen-address', false, false)),
    o('--resolv-conf <path>', 'upstream servers for other names come from this file').default('/etc/resolv.conf'),
    o('--docker-api <url>', 'the Docker engine to follow (unix:///path or tcp://host:port; "" for none)').default(
      process.env.DOCKER_HOST || 'unix:///var/run/docker.sock',
      'DOCKER_HOST or unix:///var/run/docker.sock',
    ),
    o('--docker-plugin <socket>', 'where the Docker network and IPAM plugin "weft" listens ("" for no plugin)').default(
      '/run/docker/plugins/weft.sock',
    ),
    o(
      '--ipalloc-timeout <duration>',
      'how long an allocation may wait (for consensus or space) before it fails with the reason',
    )
      .default(30_000, '30s')
      .argParser(duration),
  ];
}

export function addRouterOptions(cmd: Command): Command {
  for (const opt of routerOptions()) cmd.addOption(opt);
  return cmd;
}

/** A file named by an option, or an error that says which option's file could not be read. */
function readOptionFile(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the ${what} file ${path}: ${(err as Error).message}`);
  }
}

/** Turns commander's parsed values into RouterOptions, reading the password and peers files if given. */
export function toRouterOptions(v: Record<string, unknown>, peers: string[]): RouterOptions {
  let password = (v.password as string | undefined) ?? null;
  const file = v.passwordFile as string | undefined;
  if (file) password = readOptionFile(file, 'password').replace(/\r?\n$/, '');
  if (password === '') throw new Error('the password is empty');
  const peersFile = v.peersFile as string | undefined;
  if (peersFile) {
    const listed = readOptionFile(peersFile, 'peers')
      .split('\n')
      .map((l) => l.replace(/#.*/, ''))
      .join(' ')
      .split(/[\s,]+/)
      .filter(Boolean);
    peers = [...new Set([...peers, ...listed])];
  }
  // Refused here, before anything starts (the router would fail dialling them, after its start had begun).
  for (const p of peers) parseAddress(p, 1);
  if (v.ipv6Nat === true && v.ipv6 !== true)
    throw new Error('--ipv6-nat needs --ipv6 (without it the host has no IPv6 on the overlay to translate)');
  return {
    dataDir: v.dataDir as string,
    port: v.port as number,
    host: v.host as string,
    name: v.name as PeerName | undefined,
    nickname: v.nickname as string,
    password,
    connLimit: v.connLimit as number,
    discovery: v.discovery as boolean,
    httpAddr: v.httpAddr as string,
    logLevel: v.logLevel as string,
    gossipInterval: v.gossipInterval as number,
    heartbeatInterval: v.heartbeatInterval as number,
    ipallocRange: v.ipallocRange as string,
    serviceRange: v.serviceRange as string,
    serviceRange6: v.serviceRange6 as string,
    ipallocDefaultSubnet: v.ipallocDefaultSubnet as string | undefined,
    ipallocRange6: v.ipallocRange6 as string,
    ipallocDefaultSubnet6: v.ipallocDefaultSubnet6 as string | undefined,
    ipv6: v.ipv6 === true,
    ipv6Nat: v.ipv6Nat === true,
    ipallocInit: v.ipallocInit as string,
    ipallocTimeout: v.ipallocTimeout as number,
    datapath: v.datapath as 'fastdp' | 'ovs' | 'none',
    ovsdb: v.ovsdb as string,
    ovsBridge: v.ovsBridge as string,
    ovsDatapath: v.ovsDatapath as 'system' | 'netdev' | undefined,
    mtu: v.mtu as number | undefined,
    dns: v.dns as boolean,
    dnsDomain: v.dnsDomain as string,
    dnsTtl: v.dnsTtl as number,
    dnsListenAddress: v.dnsListenAddress as string | undefined,
    resolvConf: v.resolvConf as string,
    fastdp: v.fastdp as boolean,
    sleeve: v.sleeve as boolean,
    trustedSubnets: v.trustedSubnets as string[],
    metricsAddr: v.metricsAddr as string,
    dockerApi: v.dockerApi as string,
    dockerPlugin: v.dockerPlugin as string,
    peers,
  };
}
