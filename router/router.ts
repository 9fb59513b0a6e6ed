// Wiring: everything the router runs, started and stopped in one place.
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type http from 'node:http';
import type { FastifyInstance } from 'fastify';
import { buildRegistry, serveMetrics } from './metrics.js';
import { buildApi } from './api.js';
import { writeJsonAtomically } from './json-file.js';
import { loadIdentity, newUid } from './identity.js';
import { ConnectionMaker } from './mesh/connection-maker.js';
import { Mesh, defaultMeshTimings, type Logger } from './mesh/mesh.js';
import { TcpTransport } from './mesh/tcp.js';
import { splitHostPort, type RouterOptions } from './options.js';
import { VERSION, buildReport, type Report } from './report.js';
import { Allocator } from '../ipam/allocator.js';
import { ipamConfig } from '../ipam/config.js';
import { contains, parseCidr, parseIp } from '../ipam/addr.js';
import { IpamStore } from '../ipam/store.js';
import { containerLiveness } from '../ipam/liveness.js';
import { Datapath } from '../datapath/datapath.js';
import { defaultOvsDatapathType } from '../datapath/ovs/switch.js';
import { NameService } from '../dns/table.js';
import { DnsServer, upstreamsFromResolvConf } from '../dns/server.js';
import { DockerWatcher } from '../plugin/docker-watcher.js';
import { PolicyEngine } from '../policy/engine.js';
import { ServiceEngine } from '../services/engine.js';
import { parseServiceRange } from '../services/service.js';

export const DNS_BRIDGE_IP = '169.254.83.83';

/** With a password, traffic is encrypted unless the peer's underlay address is on a trusted subnet. */
export function encryptionPolicy(hasPassword: boolean, trusted: string[]): (peer: string, host: string) => boolean {
  const nets = trusted.map((c) => parseCidr(c));
  return (_peer, host) => {
    if (!hasPassword) return false;
    try {
      const a = parseIp(host);
      return !nets.some((n) => contains(n, { start: a, prefix: 32 }));
    } catch {
      return true;
    }
  };
}

/** What the CLI reads to find a running router: written when ready, removed at exit. */
export interface RouterInfo {
  pid: number;
  httpAddr: string;
  name: string;
  nickname: string;
  version: string;
  startedAt: string;
  /** When weft launch runs the router as a Docker container: the container's name. */
  container?: string;
}

export function routerInfoPath(dataDir: string): string {
  return join(dataDir, 'router.json');
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
    private readonly ipamStore: IpamStore,
    readonly datapath: Datapath | null,
    readonly names: NameService,
    readonly dns: DnsServer | null,
    readonly docker: DockerWatcher | null,
    readonly policy: PolicyEngine,
    readonly services: ServiceEngine,
  ) {}

  static async start(opts: RouterOptions, log: Logger): Promise<Router> {
    mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
    const id = loadIdentity(opts.dataDir, opts.name);
    const ipamConf = ipamConfig(opts);
    const serviceRange = parseServiceRange(opts.serviceRange);
    ServiceEngine.checkRanges(serviceRange, ipamConf.range);
    const ipamStore = new IpamStore(opts.dataDir, ipamConf.range, id.name);
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
    const transport = new TcpTransport(mesh, {
      name: id.name,
      nickname: opts.nickname,
      uid,
      port: opts.port,
      privateKeyPem: id.privateKeyPem,
      publicKey: id.publicKey,
      password: opts.password,
    });
    const maker = new ConnectionMaker(mesh, (host, port, o) => transport.dial(host, port, o), {
      defaultPort: opts.port,
      discovery: opts.discovery,
      connLimit: opts.connLimit,
    });
    const ipam = new Allocator(mesh, { ...ipamConf, timeoutMs: opts.ipallocTimeout, store: ipamStore, liveness: containerLiveness() });
    const withDatapath = opts.datapath === 'fastdp' || opts.datapath === 'ovs';
    const dnsOnBridge = opts.dns && withDatapath && !opts.dnsListenAddress;
    const ovs = opts.datapath === 'ovs' ? { ovsdb: opts.ovsdb, bridge: opts.ovsBridge, datapathType: opts.ovsDatapath ?? defaultOvsDatapathType(), vxlanPort: opts.port + 1 } : undefined;
    const datapath =
      withDatapath
        ? new Datapath(mesh, ipam, {
            dataDir: opts.dataDir,
            mtu: opts.mtu,
            vxlanPort: opts.port + 1,
            sleevePort: opts.port,
            fastdp: opts.fastdp,
            sleeve: opts.sleeve,
            encrypt: encryptionPolicy(opts.password !== null, opts.trustedSubnets),
            dns: dnsOnBridge ? { ip: DNS_BRIDGE_IP, domain: opts.dnsDomain } : undefined,
            ovs,
          })
        : null;
    const names = new NameService(mesh, undefined, join(opts.dataDir, 'names.json'));
    datapath?.onGone.push((container) => names.remove({ container }));
    const listen = opts.dns ? (opts.dnsListenAddress ?? (dnsOnBridge ? `${DNS_BRIDGE_IP}:53` : null)) : null;
    let dns: DnsServer | null = null;
    if (listen) {
      const { host, port } = splitHostPort(listen);
      dns = new DnsServer(names.table, {
        host,
        port,
        domain: opts.dnsDomain,
        ttl: opts.dnsTtl,
        // Never forward to ourselves.
        upstreams: upstreamsFromResolvConf(opts.resolvConf, [host, DNS_BRIDGE_IP]),
        upstreamTimeoutMs: 2000,
      });
    }
    const docker =
      datapath && opts.dockerApi
        ? new DockerWatcher({
            api: opts.dockerApi,
            datapath,
            ipam,
            names,
            dataDir: opts.dataDir,
            log,
            pluginSocket: opts.dockerPlugin || null,
            dns: dnsOnBridge ? { ip: DNS_BRIDGE_IP, domain: opts.dnsDomain } : undefined,
            peerName: id.name,
          })
        : null;
    // Before the datapath starts, so its first write of the firewall already enforces the rules.
    const policy = new PolicyEngine(mesh, datapath, opts.dataDir);
    const services = new ServiceEngine(mesh, datapath, serviceRange, opts.dataDir, opts.dnsDomain);
    names.table.services = services;
    const router = new Router(opts, mesh, transport, maker, ipam, ipamStore, datapath, names, dns, docker, policy, services);
    try {
      await datapath?.start();
      policy.start(); // the datapath's first firewall write already carried the policy
      services.start();
      await dns?.start();
      await transport.listen(opts.host, opts.port);
      const api = buildApi({ mesh, maker, ipam, datapath, names, dns, failures: transport.failures, hasPassword: opts.password !== null, discovery: opts.discovery, docker, policy, services });
      const { host, port } = splitHostPort(opts.httpAddr);
      await api.listen({ host, port });
      router.api = api;
      if (opts.metricsAddr) {
        const m = /^(.*):(\d+)$/.exec(opts.metricsAddr);
        if (!m) throw new Error(`--metrics-addr must be HOST:PORT or :PORT, not "${opts.metricsAddr}"`);
        router.metrics = await serveMetrics(buildRegistry(router), m[1] || '0.0.0.0', Number(m[2]));
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

  report(): Report {
    return buildReport({ mesh: this.mesh, maker: this.maker, ipam: this.ipam, datapath: this.datapath, names: this.names, dns: this.dns, failures: this.transport.failures, hasPassword: this.opts.password !== null, discovery: this.opts.discovery, docker: this.docker, policy: this.policy, services: this.services });
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
      this.datapath?.stop();
      this.names.stop();
      this.dns?.close();
      this.mesh.stop();
      this.transport.close();
      await this.api?.close();
      this.metrics?.close();
      await this.ipamStore.close();
    })();
    return this.stopping;
  }
}
