// Docker's remote network driver and IPAM driver, served by the router on
// /run/docker/plugins/weft.sock: `docker network create -d weft --ipam-driver weft NET`.
// Every call is a POST with a JSON body; errors are HTTP 500 with {"Err": "..."}.
//
// Network: CreateEndpoint makes a veth on the weft bridge, Join hands its other end
// to Docker (which moves it into the container as ethwe0), and the endpoint is
// announced to the mesh like an attached container. IPAM: pools are subnets of
// weft's allocation range, addresses come from weft's IPAM.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Allocator } from '../ipam/allocator.js';
import { parseCidr } from '../net/addr.js';
import { IPV4, IPV6, type CidrOf, type IpFamily, type Position } from '../net/family.js';
import type { Datapath } from '../datapath/datapath.js';
import { hostIfName, joinBridge, vethNames, withNewVeth } from '../datapath/attach.js';
import { ip, ipJson, linkExists } from '../net/command.js';
import { readJsonList, writeJsonAtomically } from '../lib/json-file.js';
import { canonicalCidr, canonicalCidr6, canonicalMac } from '../net/validate.js';
import { parseCidr6, type Addr6 } from '../net/addr6.js';
import type { Logger } from '../lib/logger.js';

const ADDRESS_SPACE = 'weft';
const GATEWAY_TYPE = 'com.docker.network.gateway';
/** What the IPAM driver allocates for: an endpoint is bound only to addresses held this way. */
const DOCKER_IDENT = 'dockernet:';
const CONTENT_TYPE = 'application/vnd.docker.plugins.v1.2+json';

export class PluginError extends Error {}

interface Pool {
  id: string;
  pool: string;
  /** Where addresses come from: the pool, or the --ip-range Docker gave. */
  range: string;
}

export interface DriverDeps {
  datapath: Datapath;
  ipam: Allocator;
  /** The IPv6 allocator even without --ipv6: what Docker got while it was on is still freed. */
  ipam6?: Allocator<Addr6>;
  dataDir: string;
  log: Logger;
  /** The DNS server's address on the bridge, routed to from containers (none without DNS). */
  dnsIp?: string;
}

/** The endpoint key weft uses for a Docker network endpoint. */
export function endpointKey(endpointId: string): string {
  return `dockerep:${endpointId}`;
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new PluginError(`${what} is missing`);
  return v;
}

function endpointId(v: unknown): string {
  const id = str(v, 'EndpointID');
  if (!/^[0-9a-f]{64}$/.test(id)) throw new PluginError(`EndpointID "${id.slice(0, 80)}" is not a Docker endpoint id`);
  return id;
}

/** How a family's pools and addresses are described to Docker (one code path serves both). */
interface FamilyWords {
  /** "" or "IPv6 ", before "subnet" and "allocation range". */
  label: string;
  /** The docker flag that names an address. */
  ipFlag: string;
  /** What to do when a pool is taken. */
  clashHint: string;
  /** The longest pool (and --ip-range) prefix weft takes. */
  maxPrefix: number;
}

const WORDS4: FamilyWords = {
  label: '',
  ipFlag: '--ip',
  clashHint: '(docker network create -d weft --ipam-driver weft --subnet CIDR NAME)',
  maxPrefix: 30,
};
const WORDS6: FamilyWords = {
  label: 'IPv6 ',
  ipFlag: '--ip6',
  clashHint: '(--subnet, once for each family)',
  maxPrefix: 120,
};

/** A network's subnet as Docker gives it to CreateNetwork. */
type PoolData = { Pool?: string; AddressSpace?: string };

/** Pools are kept as text: an IPv6 one has colons. */
const isV6 = (cidr: string) => cidr.includes(':');

export class DockerDriver {
  private server: http.Server | null = null;
  private socketPath: string | null = null;
  readonly calls = new Map<string, number>();

  constructor(private readonly deps: DriverDeps) {}

  private get poolsPath(): string {
    return join(this.deps.dataDir, 'docker-pools.json');
  }

  private pools(): Pool[] {
    return readJsonList<Pool>(this.poolsPath);
  }

  /** Answers one call: the method name (e.g. "NetworkDriver.Join") and its JSON body. */
  async handle(method: string, body: Record<string, unknown>): Promise<unknown> {
    this.calls.set(method, (this.calls.get(method) ?? 0) + 1);
    switch (method) {
      case 'Plugin.Activate':
        return { Implements: ['NetworkDriver', 'IpamDriver'] };
      case 'NetworkDriver.GetCapabilities':
        return { Scope: 'local', ConnectivityScope: 'global' };
      case 'NetworkDriver.CreateNetwork':
        return this.createNetwork(body);
      case 'NetworkDriver.CreateEndpoint':
        return this.createEndpoint(body);
      case 'NetworkDriver.DeleteEndpoint':
        return this.deleteEndpoint(body);
      case 'NetworkDriver.Join':
        return this.join(body);
      case 'NetworkDriver.EndpointOperInfo':
        return { Value: {} };
      case 'NetworkDriver.DeleteNetwork':
      case 'NetworkDriver.Leave':
      case 'NetworkDriver.DiscoverNew':
      case 'NetworkDriver.DiscoverDelete':
      case 'NetworkDriver.ProgramExternalConnectivity':
      case 'NetworkDriver.RevokeExternalConnectivity':
      case 'NetworkDriver.FreeNetwork':
        return {};
      case 'NetworkDriver.AllocateNetwork':
        return { Options: (body.Options as unknown) ?? {} };
      case 'IpamDriver.GetCapabilities':
        return { RequiresMACAddress: false, RequiresRequestReplay: false };
      case 'IpamDriver.GetDefaultAddressSpaces':
        return { LocalDefaultAddressSpace: ADDRESS_SPACE, GlobalDefaultAddressSpace: ADDRESS_SPACE };
      case 'IpamDriver.RequestPool':
        return this.requestPool(body);
      case 'IpamDriver.ReleasePool':
        return this.releasePool(body);
      case 'IpamDriver.RequestAddress':
        return this.requestAddress(body);
      case 'IpamDriver.ReleaseAddress':
        return this.releaseAddress(body);
      default:
        throw new PluginError(`weft's plugin does not implement ${method}`);
    }
  }

  // ---------------------------------------------------------------- IPAM

  /** IPv6 addresses, when the router gives containers IPv6 (--ipv6). */
  private get ipam6(): Allocator<Addr6> | undefined {
    return this.deps.datapath.config.ipam6;
  }

  private need6(): Allocator<Addr6> {
    const a = this.ipam6;
    if (!a)
      throw new PluginError(
        'this weft router carries no IPv6 (it runs without --ipv6): create the network without --ipv6, or launch weft with --ipv6',
      );
    return a;
  }

  private requestPool(b: Record<string, unknown>): unknown {
    return b.V6 === true
      ? this.requestPoolIn(IPV6, this.need6(), WORDS6, b)
      : this.requestPoolIn(IPV4, this.deps.ipam, WORDS4, b);
  }

  /**
   * A pool from weft's range of the family (default: its default subnet), apart from the other networks'
   * pools of that family: Docker asks again and again while a pool overlaps one of its networks, so say
   * no, and why, at once.
   */
  private requestPoolIn<A extends Position>(
    fam: IpFamily<A>,
    ipam: Allocator<A>,
    w: FamilyWords,
    b: Record<string, unknown>,
  ): unknown {
    const range = ipam.config.range;
    let pool: CidrOf<A>;
    try {
      pool = typeof b.Pool === 'string' && b.Pool !== '' ? fam.parseCidr(b.Pool) : ipam.config.defaultSubnet;
    } catch (err) {
      throw new PluginError(`--subnet: ${(err as Error).message}`);
    }
    if (!fam.contains(range, pool))
      throw new PluginError(
        `subnet ${fam.formatCidr(pool)} is outside weft's ${w.label}allocation range ${fam.formatCidr(range)}: give --subnet inside it`,
      );
    if (pool.prefix > w.maxPrefix)
      throw new PluginError(`subnet ${fam.formatCidr(pool)} is too small for weft (at most /${w.maxPrefix})`);
    let sub = pool;
    if (typeof b.SubPool === 'string' && b.SubPool !== '') {
      try {
        sub = fam.parseCidr(b.SubPool);
      } catch (err) {
        throw new PluginError(`--ip-range: ${(err as Error).message}`);
      }
      if (!fam.contains(pool, sub))
        throw new PluginError(`--ip-range ${fam.formatCidr(sub)} is not inside --subnet ${fam.formatCidr(pool)}`);
      if (sub.prefix > w.maxPrefix)
        throw new PluginError(`--ip-range ${fam.formatCidr(sub)} is too small for weft (at most /${w.maxPrefix})`);
    }
    const pools = this.pools();
    const clash = pools.find((p) => isV6(p.pool) === (fam.version === 6) && fam.overlaps(fam.parseCidr(p.pool), pool));
    if (clash)
      throw new PluginError(
        `${w.label}subnet ${fam.formatCidr(pool)} overlaps ${clash.pool}, already used by another weft network on this Docker engine; ` +
          `give each weft network its own ${w.label}subnet inside ${fam.formatCidr(range)} ${w.clashHint}`,
      );
    const entry: Pool = {
      id: `weft-${fam.formatCidr(pool)}-${fam.formatCidr(sub)}`,
      pool: fam.formatCidr(pool),
      range: fam.formatCidr(sub),
    };
    writeJsonAtomically(this.poolsPath, [...pools, entry]);
    return { PoolID: entry.id, Pool: entry.pool, Data: {} };
  }

  private releasePool(b: Record<string, unknown>): unknown {
    const id = str(b.PoolID, 'PoolID');
    writeJsonAtomically(
      this.poolsPath,
      this.pools().filter((p) => p.id !== id),
    );
    return {};
  }

  private pool(id: unknown): Pool {
    const p = this.pools().find((x) => x.id === id);
    if (!p)
      throw new PluginError(
        `unknown pool "${String(id).slice(0, 100)}" (was the network made with --ipam-driver weft?)`,
      );
    return p;
  }

  private async requestAddress(b: Record<string, unknown>): Promise<unknown> {
    const pool = this.pool(b.PoolID);
    return isV6(pool.pool)
      ? this.requestAddressIn(IPV6, this.need6(), WORDS6, pool, b)
      : this.requestAddressIn(IPV4, this.deps.ipam, WORDS4, pool, b);
  }

  private async requestAddressIn<A extends Position>(
    fam: IpFamily<A>,
    ipam: Allocator<A>,
    w: FamilyWords,
    pool: Pool,
    b: Record<string, unknown>,
  ): Promise<unknown> {
    const net = fam.parseCidr(pool.pool);
    const opts = (b.Options ?? {}) as Record<string, unknown>;
    // The overlay has no gateway; Docker wants one per network: the subnet's own address, never handed out.
    if (opts.RequestAddressType === GATEWAY_TYPE) return { Address: `${fam.formatIp(net.start)}/${net.prefix}` };
    const ident = `${DOCKER_IDENT}${randomBytes(6).toString('hex')}`;
    let got: { addr: A };
    if (typeof b.Address === 'string' && b.Address !== '') {
      let want: A;
      try {
        want = fam.parseIp(b.Address);
      } catch (err) {
        throw new PluginError(`${w.ipFlag}: ${(err as Error).message}`);
      }
      if (!fam.contains(net, { start: want, prefix: fam.bits }))
        throw new PluginError(`${b.Address} is not in the network's ${w.label}subnet ${pool.pool}`);
      if (want === net.start)
        throw new PluginError(`${b.Address} is the subnet's own address (it stands for the gateway): choose another`);
      got = await ipam.claim(ident, want, net);
    } else {
      got = await ipam.allocate(ident, fam.parseCidr(pool.range));
    }
    return { Address: `${fam.formatIp(got.addr)}/${net.prefix}` };
  }

  private async releaseAddress(b: Record<string, unknown>): Promise<unknown> {
    const pool = this.pool(b.PoolID);
    // IPv6: the router's IPv6 allocator even after a restart without --ipv6, so what Docker got then is freed.
    return isV6(pool.pool)
      ? this.releaseAddressIn(IPV6, this.deps.ipam6 ?? this.ipam6, pool, b)
      : this.releaseAddressIn(IPV4, this.deps.ipam, pool, b);
  }

  private async releaseAddressIn<A extends Position>(
    fam: IpFamily<A>,
    ipam: Allocator<A> | undefined,
    pool: Pool,
    b: Record<string, unknown>,
  ): Promise<unknown> {
    let addr: A;
    try {
      addr = fam.parseIp(str(b.Address, 'Address').split('/')[0]);
    } catch (err) {
      throw new PluginError(`Address: ${(err as Error).message}`);
    }
    if (addr === fam.parseCidr(pool.pool).start) return {}; // the pretend gateway
    // Only what this driver handed out: never another container's address (a stale or replayed release).
    const holder = ipam?.holderOf(addr);
    if (holder?.startsWith(DOCKER_IDENT)) await ipam!.free(holder, addr).catch(() => undefined);
    return {};
  }

  // ---------------------------------------------------------------- network

  private createNetwork(b: Record<string, unknown>): unknown {
    const v4 = (b.IPv4Data ?? []) as PoolData[];
    if (!Array.isArray(v4) || v4.length === 0) throw new PluginError('the network has no IPv4 subnet');
    this.checkPoolData(IPV4, this.deps.ipam.config.range, 'IPv4Data', WORDS4, v4);
    const v6 = (b.IPv6Data ?? []) as PoolData[];
    if (Array.isArray(v6) && v6.length > 0) this.checkPoolData(IPV6, this.need6().config.range, 'IPv6Data', WORDS6, v6);
    return {};
  }

  /** A network's subnets of one family must be ones weft's IPAM driver handed out (inside weft's range). */
  private checkPoolData<A extends Position>(
    fam: IpFamily<A>,
    range: CidrOf<A>,
    field: string,
    w: FamilyWords,
    data: PoolData[],
  ): void {
    for (const d of data) {
      let inRange = false;
      try {
        inRange = fam.contains(range, fam.parseCidr(str(d.Pool, `${field}.Pool`)));
      } catch {
        inRange = false;
      }
      if (d.AddressSpace !== ADDRESS_SPACE || !inRange)
        throw new PluginError(
          `weft networks take their addresses from weft: create it with --ipam-driver weft (${w.label}subnet ${d.Pool ?? '?'} is not one weft handed out)`,
        );
    }
  }

  private async createEndpoint(b: Record<string, unknown>): Promise<unknown> {
    const eid = endpointId(b.EndpointID);
    const iface = (b.Interface ?? {}) as { Address?: string; AddressIPv6?: string; MacAddress?: string };
    // Canonical forms: what Docker sends is announced to every peer (a stray newline in an address
    // once made them drop this host's whole endpoint record).
    const address = canonicalCidr(
      str(iface.Address, 'Interface.Address (an IPv4 address from the IPAM driver)'),
      true,
      'Interface.Address',
    );
    const address6 =
      typeof iface.AddressIPv6 === 'string' && iface.AddressIPv6 !== ''
        ? canonicalCidr6(iface.AddressIPv6, true, 'Interface.AddressIPv6')
        : null;
    if (address6 !== null) this.need6();
    // Only addresses this driver handed out: an endpoint bound and announced with another container's
    // address would take its traffic over.
    const held = (holder: string | undefined, what: string) => {
      if (!holder?.startsWith(DOCKER_IDENT))
        throw new PluginError(
          `${what} was not handed out by weft's IPAM driver (was the network made with --ipam-driver weft?)`,
        );
    };
    held(this.deps.ipam.holderOf(parseCidr(address, true).addr), `Interface.Address ${address}`);
    if (address6 !== null)
      held(this.ipam6?.holderOf(parseCidr6(address6, true).addr), `Interface.AddressIPv6 ${address6}`);
    const cidrs6 = address6 !== null ? [address6] : [];
    const wantedMac = iface.MacAddress ? canonicalMac(iface.MacAddress, 'Interface.MacAddress') : null;
    const key = endpointKey(eid);
    return withNewVeth(key, this.deps.datapath.mtu, async ({ hostIf, peerIf }) => {
      if (wantedMac) await ip(['link', 'set', peerIf, 'address', wantedMac]);
      const mac = (await ipJson<{ address: string }[]>(['link', 'show', 'dev', peerIf]))[0].address;
      await this.deps.datapath.bindPort(hostIf, mac, [address], cidrs6);
      await joinBridge(hostIf);
      await this.deps.datapath.plug(key, mac, [address], [], cidrs6);
      return { Interface: wantedMac ? {} : { MacAddress: mac } };
    });
  }

  private async join(b: Record<string, unknown>): Promise<unknown> {
    const key = endpointKey(endpointId(b.EndpointID));
    const { hostIf, peerIf } = vethNames(key);
    if (!(await linkExists(hostIf)))
      throw new PluginError(`endpoint ${key.slice(9, 21)} has no interface (was it created on this host?)`);
    const routes = [{ Destination: '224.0.0.0/4', RouteType: 1 }];
    if (this.deps.dnsIp) routes.push({ Destination: `${this.deps.dnsIp}/32`, RouteType: 1 });
    return { InterfaceName: { SrcName: peerIf, DstPrefix: 'ethwe' }, StaticRoutes: routes };
  }

  private async deleteEndpoint(b: Record<string, unknown>): Promise<unknown> {
    const key = endpointKey(endpointId(b.EndpointID));
    const hostIf = hostIfName(key);
    if (await linkExists(hostIf)) await ip(['link', 'del', hostIf]);
    await this.deps.datapath.unplug(key);
    return {};
  }

  // ---------------------------------------------------------------- serving

  /** Serves the plugin on a unix socket (a stale socket file from a previous run is replaced). */
  async listen(socketPath: string): Promise<void> {
    mkdirSync(dirname(socketPath), { recursive: true });
    if (existsSync(socketPath) && statSync(socketPath).isSocket()) rmSync(socketPath);
    const server = http.createServer((req, res) => void this.serve(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.socketPath = socketPath;
  }

  private async serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': CONTENT_TYPE });
      res.end(JSON.stringify(body));
    };
    const method = (req.url ?? '').replace(/^\//, '');
    let text = '';
    try {
      for await (const chunk of req) {
        text += String(chunk);
        if (text.length > 1 << 20) throw new PluginError('request body too large');
      }
      let body: unknown = {};
      if (text.trim() !== '') {
        try {
          body = JSON.parse(text);
        } catch {
          throw new PluginError('the request body is not JSON');
        }
      }
      if (body === null || typeof body !== 'object' || Array.isArray(body))
        throw new PluginError('the request body must be a JSON object');
      reply(200, await this.handle(method, body as Record<string, unknown>));
    } catch (err) {
      const msg = (err as Error).message;
      this.deps.log.warn({ call: method, err: msg }, 'Docker plugin call failed');
      reply(500, { Err: msg });
    }
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
    if (this.socketPath) rmSync(this.socketPath, { force: true });
  }

  get socket(): string | null {
    return this.socketPath;
  }
}
