// Wiring: everything the router runs, started and stopped in one place.
import { routerInfoPath, type RouterInfo } from './contract.js';
import { VERSION } from '../lib/version.js';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import type http from 'node:http';
import type { FastifyInstance } from 'fastify';
import { serveMetrics } from './metrics.js';
import { buildApi, type ApiListen, type ApiSources } from './api/index.js';
import { StateWrites, readCheckedList, stateFile, writeJsonAtomically } from '../lib/json-file.js';
import {
  PeerKeys,
  pinnedKeyFromJson,
  passwordKey,
  ConnectionMaker,
  Mesh,
  defaultMeshTimings,
  TcpTransport,
  isPeerName,
  type PeerName,
  tombstoneTimings,
} from '../mesh/index.js';
import { loadIdentity, newUid } from './identity.js';
import { type Logger } from '../lib/logger.js';
import type { RouterOptions } from './options.js';
import { parseListen } from '../net/host-port.js';
import { nftSession } from '../net/nft-session.js';
import { execHelper } from '../net/exec-helper.js';
import { buildReport } from './report.js';
import type { Report } from './contract.js';
import { Allocator, IpamError } from '../ipam/allocator.js';
import { ipam6Config, ipamConfig } from '../ipam/config.js';
import { contains6, formatCidr6, parseCidr6, parseIp6, type Addr6, type Cidr6 } from '../net/addr6.js';
import { IPV6 } from '../net/family.js';
import { contains, parseCidr, parseIp, type Cidr } from '../net/addr.js';
import { IpamStore } from '../ipam/store.js';
import { containerLiveness } from '../ipam/liveness.js';
import { Datapath } from '../datapath/datapath.js';
import { defaultOvsDatapathType } from '../datapath/ovs/switch.js';
import { NameService } from '../dns/table.js';
import { DnsServer, upstreamsFromResolvConf } from '../dns/server.js';
import { DockerWatcher } from '../plugin/docker-watcher.js';
import { CniService } from '../plugin/cni.js';
import { PolicyEngine } from '../policy/engine.js';
import { ServiceEngine } from '../services/engine.js';
import { parseServiceRange, parseServiceRange6 } from '../services/service.js';

const DNS_BRIDGE_IP = '169.254.83.83';
/** The DNS server's IPv6 address on the bridge (--ipv6): the same on every host, as the IPv4 one. */
const DNS_BRIDGE_IP6 = 'fd77:6566:7453::53';

/** With a password, traffic is encrypted unless the peer's underlay address is on a trusted subnet (either family). */
function encryptionPolicy(hasPassword: boolean, trusted: string[]): (peer: string, host: string) => boolean {
  const nets = trusted.filter((c) => !c.includes(':')).map((c) => parseCidr(c));
  const nets6 = trusted.filter((c) => c.includes(':')).map((c) => parseCidr6(c));
  return (_peer, host) => {
    if (!hasPassword) return false;
    try {
      if (host.includes(':')) {
        const a = parseIp6(host);
        return !nets6.some((n) => contains6(n, { start: a, prefix: 128 }));
      }
      const a = parseIp(host);
      return !nets.some((n) => contains(n, { start: a, prefix: 32 }));
    } catch {
      return true;
    }
  };
}

/**
 * Who may ask weft's DNS server: loopback, the DNS address itself (the host asking it), the allocation
 * range, and the addresses of this host's containers (a claim may be outside the range). Not the
 * underlay: the server must not be an open resolver there.
 */
function dnsClients(range: Cidr, datapath: Datapath | null): (addr: number) => boolean {
  const dnsIp = parseIp(DNS_BRIDGE_IP);
  let local: Set<number> | null = null;
  datapath?.endpoints.onChange(() => (local = null));
  return (a) => {
    if (a >>> 24 === 127 || a === dnsIp || contains(range, { start: a, prefix: 32 })) return true;
    local ??= new Set((datapath?.endpoints.local ?? []).flatMap((e) => e.cidrs.map((c) => parseCidr(c, true).addr)));
    return local.has(a);
  };
}

/** Over IPv6 the same: the IPv6 allocation range and this host's containers' IPv6 addresses, loopback, itself. */
function dnsClients6(range: Cidr6, datapath: Datapath | null): (addr: string) => boolean {
  let local: Set<bigint> | null = null;
  datapath?.endpoints.onChange(() => (local = null));
  const dns6 = parseIp6(DNS_BRIDGE_IP6);
  return (text) => {
    let a: bigint;
    try {
      a = parseIp6(text);
    } catch {
      return false; // a zone, or no IPv6 address at all
    }
    if (a === 1n || a === dns6 || contains6(range, { start: a, prefix: 128 })) return true;
    local ??= new Set(
      (datapath?.endpoints.local ?? []).flatMap((e) => (e.cidrs6 ?? []).map((c) => parseCidr6(c, true).addr)),
    );
    return local.has(a);
  };
}

/** The DNS server's IPv6 address must be no container's and no service's. */
function checkDns6Outside(alloc: Cidr6, service: Cidr6): void {
  const dns6 = { start: parseIp6(DNS_BRIDGE_IP6), prefix: 128 };
  for (const [r, what] of [
    [alloc, '--ipalloc-range6'],
    [service, '--service-range6'],
  ] as const)
    if (contains6(r, dns6))
      throw new Error(
        `${what} ${formatCidr6(r)} holds ${DNS_BRIDGE_IP6}, the DNS server's IPv6 address on every host's bridge: choose a range outside fd77:6566:7453::/48`,
      );
}

/** --http-addr as where to listen: "unix:/PATH" or HOST:PORT. */
function apiListen(addr: string): ApiListen {
  if (addr.startsWith('unix:')) {
    const path = addr.slice('unix:'.length);
    if (!path.startsWith('/'))
      throw new Error(`--http-addr ${addr}: a unix socket needs an absolute path (unix:/run/weft/api.sock)`);
    return { unix: path };
  }
  return parseListen(addr, '--http-addr');
}

/** The router's own ports (mesh, sleeve, VXLAN, API, metrics): the firewall keeps containers off them. */
function routerPorts(opts: RouterOptions): { tcp: number[]; udp: number[] } {
  const tcp = [opts.port];
  for (const addr of [opts.httpAddr, opts.metricsAddr])
    if (addr && !addr.startsWith('unix:')) tcp.push(parseListen(addr).port);
  return { tcp, udp: [opts.port, opts.port + 1] };
}

export class Router {
  private api: FastifyInstance | null = null;
  private metrics: http.Server | null = null;
  private stopping: Promise<void> | null = null;

  private constructor(
    readonly opts: RouterOptions,
    readonly mesh: Mesh,
    readonly transport: TcpTransport,
    readonly maker: ConnectionMaker,
    readonly ipam: Allocator,
    /** IPv6 addresses: a ring of their own (channel ipam6), started when first asked for. */
    readonly ipam6: Allocator<Addr6>,
    private readonly ipamStore: IpamStore,
    readonly datapath: Datapath | null,
    readonly names: NameService,
    readonly dns: DnsServer | null,
    readonly docker: DockerWatcher | null,
    readonly policy: PolicyEngine,
    readonly services: ServiceEngine,
    readonly writes: StateWrites,
    readonly peerKeys: PeerKeys,
  ) {}

  static async start(opts: RouterOptions, log: Logger): Promise<Router> {
    // scrypt runs on the thread pool while the rest starts.
    const pwKey = opts.password === null ? Promise.resolve(null) : passwordKey(opts.password);
    mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
    const id = loadIdentity(opts.dataDir, opts.name);
    const ipamConf = ipamConfig(opts);
    const ipam6Conf = ipam6Config(opts);
    const serviceRange = parseServiceRange(opts.serviceRange);
    // IPv6 VIPs only where containers have IPv6 (--ipv6).
    const serviceRange6 = opts.ipv6 ? parseServiceRange6(opts.serviceRange6, serviceRange) : null;
    ServiceEngine.checkRanges(
      serviceRange,
      ipamConf.range,
      serviceRange6 ? { service: serviceRange6, alloc: ipam6Conf.range } : undefined,
    );
    if (opts.ipv6) checkDns6Outside(ipam6Conf.range, serviceRange6!);
    const ipamStore = new IpamStore(opts.dataDir, ipamConf.range, id.name);
    const ipam6Store = ipamStore.ipv6(ipam6Conf.range);
    const state = { dir: opts.dataDir, writes: new StateWrites(log) };
    const uid = newUid();
    const mesh = new Mesh({
      name: id.name,
      nickname: opts.nickname,
      uid,
      port: opts.port,
      connLimit: opts.connLimit,
      ...defaultMeshTimings,
      gossipInterval: opts.gossipInterval,
      heartbeatInterval: opts.heartbeatInterval,
      fullStateGossip: false,
      log,
    });
    const keysFile = stateFile(state, 'peer-keys.json');
    const peerKeys = new PeerKeys(readCheckedList(keysFile.path, pinnedKeyFromJson), (all) =>
      state.writes.write(keysFile.path, all),
    );
    const transport = new TcpTransport(
      mesh,
      {
        name: id.name,
        nickname: opts.nickname,
        uid,
        port: opts.port,
        privateKeyPem: id.privateKeyPem,
        publicKey: id.publicKey,
        passwordKey: await pwKey,
      },
      peerKeys,
    );
    const maker = new ConnectionMaker(mesh, (host, port, o) => transport.dial(host, port, o), {
      defaultPort: opts.port,
      discovery: opts.discovery,
      connLimit: opts.connLimit,
    });
    const liveness = containerLiveness();
    const ipam = new Allocator(mesh, { ...ipamConf, timeoutMs: opts.ipallocTimeout, store: ipamStore, liveness });
    const ipam6 = new Allocator<Addr6>(mesh, {
      ...ipam6Conf,
      family: IPV6,
      channel: 'ipam6',
      init: ipamConf.init,
      timeoutMs: opts.ipallocTimeout,
      store: ipam6Store,
      liveness,
    });
    const withDatapath = opts.datapath === 'fastdp' || opts.datapath === 'ovs';
    const dnsOnBridge = opts.dns && withDatapath && !opts.dnsListenAddress;
    const ovs =
      opts.datapath === 'ovs'
        ? {
            ovsdb: opts.ovsdb,
            bridge: opts.ovsBridge,
            datapathType: opts.ovsDatapath ?? defaultOvsDatapathType(),
            vxlanPort: opts.port + 1,
          }
        : undefined;
    // The components that need each other get hooks in their constructors: the datapath writes the
    // security groups' part of the firewall table, DNS answers service names, and DNS forgets the names
    // of containers the datapath finds gone. The engines behind the hooks are made below, before
    // anything starts.
    let policy: PolicyEngine | null = null;
    let services: ServiceEngine | null = null;
    let names: NameService | null = null;
    const datapath = withDatapath
      ? new Datapath(mesh, ipam, {
          state,
          routerPorts: routerPorts(opts),
          mtu: opts.mtu,
          vxlanPort: opts.port + 1,
          sleevePort: opts.port,
          fastdp: opts.fastdp,
          sleeve: opts.sleeve,
          // The mesh listens on an IPv6 address (`::`: both families): peers may be reached over IPv6.
          underlay6: opts.host.includes(':'),
          encrypt: encryptionPolicy(opts.password !== null, opts.trustedSubnets),
          dns: dnsOnBridge ? { ip: DNS_BRIDGE_IP, domain: opts.dnsDomain, ip6: DNS_BRIDGE_IP6 } : undefined,
          ovs,
          firewallPart: {
            part: () => policy!.firewallPart(),
            written: () => policy!.written(),
            limitedIn: () => policy!.limitedIn(),
          },
          // Its names, and its IPv6 addresses (the datapath frees the IPv4 ones itself).
          containerGone: (container) => {
            names!.remove({ container });
            void ipam6.free(container).catch(() => undefined); // none held: not-found, nothing to do
          },
          ...(opts.ipv6 ? { ipam6, ipv6Nat: opts.ipv6Nat } : {}),
        })
      : null;
    names = new NameService(mesh, {
      persist: stateFile(state, 'names.json'),
      services: { vipFor: (h) => services!.vipFor(h), nameOf: (ip) => services!.nameOf(ip) },
    });
    const listen = opts.dns ? (opts.dnsListenAddress ?? (dnsOnBridge ? `${DNS_BRIDGE_IP}:53` : null)) : null;
    let dns: DnsServer | null = null;
    if (listen) {
      const { host, port } = parseListen(listen, '--dns-listen-address');
      dns = new DnsServer(names.table, {
        host,
        port,
        domain: opts.dnsDomain,
        ttl: opts.dnsTtl,
        // Never forward to ourselves.
        upstreams: upstreamsFromResolvConf(opts.resolvConf, [host, DNS_BRIDGE_IP, DNS_BRIDGE_IP6]),
        upstreamTimeoutMs: 2000,
        clients: dnsClients(ipamConf.range, datapath),
        // On the bridge with --ipv6: over IPv6 too, for the IPv6 range and this host's containers.
        ...(dnsOnBridge && opts.ipv6 && !opts.dnsListenAddress
          ? { host6: DNS_BRIDGE_IP6, clients6: dnsClients6(ipam6Conf.range, datapath) }
          : {}),
      });
    }
    const docker =
      datapath && opts.dockerApi
        ? new DockerWatcher({
            api: opts.dockerApi,
            datapath,
            ipam,
            ipam6,
            names,
            dataDir: opts.dataDir,
            writes: state.writes,
            log,
            pluginSocket: opts.dockerPlugin || null,
            dns: dnsOnBridge ? { ip: DNS_BRIDGE_IP, domain: opts.dnsDomain } : undefined,
            peerName: id.name,
          })
        : null;
    // Before the datapath starts, so its first write of the firewall already enforces the rules.
    const tombstones = {
      timings: tombstoneTimings(opts.gossipInterval),
      // Peers this host knew of before it kept members (an upgrade): owners of address space, pinned keys.
      knownPeers: () => [
        ...[ipam.ring, ipam6.ring].flatMap((ring) => ring?.all().map((e) => e.owner) ?? []),
        ...peerKeys.all().map((k) => k.name),
      ],
    };
    policy = new PolicyEngine(mesh, datapath, state, tombstones);
    services = new ServiceEngine(mesh, datapath, serviceRange, state, opts.dnsDomain, serviceRange6, tombstones);
    const router = new Router(
      opts,
      mesh,
      transport,
      maker,
      ipam,
      ipam6,
      ipamStore,
      datapath,
      names,
      dns,
      docker,
      policy,
      services,
      state.writes,
      peerKeys,
    );
    try {
      // The API is built (the main thread's work, some tens of ms) in turns while the datapath starts
      // (its start waits mostly on `ip` and `nft`); it answers nothing until it listens, below.
      const listen = apiListen(opts.httpAddr);
      // Made before the datapath starts: nothing between its start and the wait for it below may throw.
      const sources: ApiSources = {
        mesh,
        maker,
        ipam,
        ipam6,
        datapath,
        names,
        dns,
        failures: transport.failures,
        hasPassword: opts.password !== null,
        discovery: opts.discovery,
        docker,
        policy,
        services,
        writes: state.writes,
        removePeer: (who) => router.removePeer(who),
        cni: new CniService({
          datapath,
          names,
          dns: dnsOnBridge
            ? {
                ip: DNS_BRIDGE_IP,
                ...(opts.ipv6 ? { ip6: DNS_BRIDGE_IP6 } : {}),
                domain: opts.dnsDomain.replace(/\.$/, ''),
              }
            : null,
          ipamState: () => ipam.status().state,
        }),
        log,
      };
      const datapathStarted = datapath?.start();
      const building = buildApi(sources, listen, { inTurns: true }).then(async (app) => {
        router.api = app; // closed by stop() if anything below fails
        await app.ready();
        return app;
      });
      // Each waited for (neither's failure left unhandled), then the first failure thrown.
      const [started, built] = await Promise.allSettled([datapathStarted, building]);
      if (started.status === 'rejected') throw started.reason;
      if (built.status === 'rejected') throw built.reason;
      const api = built.value;
      policy.start(); // the datapath's first firewall write already carried the policy
      services.start();
      await dns?.start();
      await transport.listen(opts.host, opts.port);
      if ('unix' in listen) {
        // Root only: the socket file's mode is the API's only lock.
        rmSync(listen.unix, { force: true });
        mkdirSync(dirname(listen.unix), { recursive: true, mode: 0o700 });
        const umask = process.umask(0o177);
        try {
          await api.listen({ path: listen.unix });
        } finally {
          process.umask(umask);
        }
        chmodSync(listen.unix, 0o600);
      } else {
        await api.listen({ host: listen.host, port: listen.port });
      }
      if (opts.metricsAddr) {
        const m = parseListen(opts.metricsAddr, '--metrics-addr');
        router.metrics = await serveMetrics(
          async () => (await import('./metrics-registry.js')).buildRegistry(router),
          m.host,
          m.port,
          { onLoadError: (err) => log.error({ err: err.message }, 'cannot load the metrics registry') },
        );
      }
      if (opts.peers.length > 0) maker.connect(opts.peers);
      docker?.start();
      router.writeInfo();
      log.info({ name: id.name, port: opts.port, http: opts.httpAddr, peers: opts.peers }, 'weft router started');
      return router;
    } catch (err) {
      await router.stop();
      throw err;
    }
  }

  /**
   * A peer gone for good (weft rmpeer): its address ranges pass to this peer, and its endpoints, DNS
   * names and service health records are replaced by empty ones everywhere at once (gossiped), so
   * nothing of it lingers for the grace periods; its pinned key is forgotten. Refuses a reachable peer.
   */
  async removePeer(who: string): Promise<{ peer: PeerName; addresses: number; removed: string[] }> {
    let peer: PeerName | undefined = isPeerName(who) ? who : undefined;
    if (!peer) {
      const named = this.ipam.peersNamed(who);
      if (named.length > 1)
        throw new IpamError(
          'invalid',
          `nickname "${who}" names several peers (${named.join(', ')}); use the peer name`,
        );
      peer = named[0];
    }
    if (!peer)
      throw new IpamError(
        'not-found',
        `no peer "${who}" is known here (weft status ipam lists the peers that own addresses)`,
      );
    if (peer === this.mesh.name)
      throw new IpamError('refused', 'cannot rmpeer this peer itself (use weft reset to leave)');
    if (this.mesh.routes.unicastAll.has(peer))
      throw new IpamError(
        'refused',
        `peer ${peer} is alive (reachable through the mesh); rmpeer is only for peers that are gone for good`,
      );
    const removed: string[] = [];
    const addresses = this.ipam.owns(peer) ? (await this.ipam.rmpeer(peer)).addresses : 0;
    if (this.ipam6.owns(peer)) {
      await this.ipam6.rmpeer(peer);
      removed.push('IPv6 address ranges');
    }
    if (this.datapath?.endpoints.evict(peer)) removed.push('endpoints');
    if (this.names.evict(peer)) removed.push('DNS names');
    if (this.services.health.evict(peer)) removed.push('service health');
    // No longer waited for before removed rules and services are forgotten (mesh/tombstones.ts).
    if (this.policy.table.forgetMember(peer)) removed.push('policy member');
    if (this.services.table.forgetMember(peer)) removed.push('services member');
    if (this.peerKeys.forget(peer)) removed.push('pinned key');
    if (addresses === 0 && removed.length === 0 && !this.mesh.topology.get(peer))
      throw new IpamError('not-found', `peer ${peer} has nothing here to remove`);
    return { peer, addresses, removed };
  }

  report(): Report {
    return buildReport({
      mesh: this.mesh,
      maker: this.maker,
      ipam: this.ipam,
      ipam6: this.ipam6,
      datapath: this.datapath,
      names: this.names,
      dns: this.dns,
      failures: this.transport.failures,
      hasPassword: this.opts.password !== null,
      discovery: this.opts.discovery,
      docker: this.docker,
      policy: this.policy,
      services: this.services,
      writes: this.writes,
    });
  }

  private writeInfo(): void {
    const info: RouterInfo = {
      pid: process.pid,
      httpAddr: this.opts.httpAddr,
      name: this.mesh.name,
      nickname: this.opts.nickname,
      version: VERSION,
      startedAt: new Date().toISOString(),
      ...(process.env.WEFT_CONTAINER ? { container: process.env.WEFT_CONTAINER } : {}),
    };
    writeJsonAtomically(routerInfoPath(this.opts.dataDir), info);
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      rmSync(routerInfoPath(this.opts.dataDir), { force: true });
      await this.docker?.stop();
      this.policy.stop();
      this.services.stop();
      this.maker.stop();
      this.ipam.stop();
      this.ipam6.stop();
      this.datapath?.stop();
      nftSession.end();
      execHelper()?.end();
      this.names.stop();
      this.dns?.close();
      this.mesh.stop();
      this.transport.close();
      await this.api?.close();
      if (this.opts.httpAddr.startsWith('unix:')) rmSync(this.opts.httpAddr.slice('unix:'.length), { force: true });
      this.metrics?.close();
      await this.ipamStore.close();
    })();
    return this.stopping;
  }
}
