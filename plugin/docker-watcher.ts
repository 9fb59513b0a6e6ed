// The router's side of Docker: finds containers by name or id for `weft attach`,
// follows the engine's events (a container that dies loses its addresses and
// names; one weft attached gets reattached when it starts again; containers on
// weft plugin networks get their DNS names), and serves the network plugin once
// the engine answers. Without an engine it keeps trying, quietly, and says so
// in the status.
import { WeftError } from '../lib/errors.js';
import { join } from 'node:path';
import type { Datapath } from '../datapath/datapath.js';
import { DOCKER_ID, announceWhenForwarding, pinDns } from '../datapath/attach.js';
import { bridgeMac } from '../datapath/bridge.js';
import { ipJson } from '../net/command.js';
import type { NameService } from '../dns/table.js';
import type { Allocator } from '../ipam/allocator.js';
import type { Addr6 } from '../net/addr6.js';
import { readJsonList, type StateWrites } from '../lib/json-file.js';
import type { Logger } from '../lib/logger.js';
import { DockerApi, type ContainerInfo, type DockerEvent } from './docker-api.js';
import { DockerDriver, endpointKey } from './docker-driver.js';
import { GROUP_NAME } from '../net/validate.js';

/** How `weft attach` attached a Docker container, so a restart of it can be attached the same way. */
interface Attached {
  id: string;
  cidrs: string[];
  subnet?: string;
  hostname?: string;
  groups?: string[];
  /** Attached with --gateway: the default route through this host. */
  gateway?: boolean;
  /** Attached with --ipv4-only or --ipv6-only. */
  only?: 'ipv4' | 'ipv6';
}

/** The Docker label that puts a container in security groups: weft.group=web,frontend */
const GROUP_LABEL = 'weft.group';

/** The groups a container's label names (malformed names are left out, and logged by the caller). */
function labelGroups(c: ContainerInfo): { groups: string[]; bad: string[] } {
  const text = c.Config.Labels?.[GROUP_LABEL] ?? '';
  const all = text
    .split(',')
    .map((g) => g.trim())
    .filter(Boolean);
  return { groups: all.filter((g) => GROUP_NAME.test(g)), bad: all.filter((g) => !GROUP_NAME.test(g)) };
}

export interface DockerStatus {
  api: string;
  connected: boolean;
  version: string | null;
  /** Why not connected, or what it is doing. */
  state: string;
  plugin: string | null;
  pluginError: string | null;
}

export interface WatcherDeps {
  api: string;
  datapath: Datapath;
  ipam: Allocator;
  /** The IPv6 allocator (built on every router): releases of IPv6 addresses Docker got while --ipv6 was on. */
  ipam6?: Allocator<Addr6>;
  names: NameService;
  dataDir: string;
  /** Records state files that could not be written (status shows them). */
  writes: StateWrites;
  log: Logger;
  /** The plugin socket, or null for no plugin. */
  pluginSocket: string | null;
  dns?: { ip: string; domain: string };
  /** The mesh name, for the bridge's MAC. */
  peerName: string;
}

export class DockerWatcher {
  readonly api: DockerApi;
  readonly driver: DockerDriver;
  readonly status: DockerStatus;
  private watch: { stop: () => void } | null = null;
  private stopped = false;
  /** Events are handled one at a time, in order. */
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly deps: WatcherDeps) {
    this.api = new DockerApi(deps.api);
    this.driver = new DockerDriver({
      datapath: deps.datapath,
      ipam: deps.ipam,
      ...(deps.ipam6 ? { ipam6: deps.ipam6 } : {}),
      dataDir: deps.dataDir,
      log: deps.log,
      dnsIp: deps.dns?.ip,
    });
    this.status = {
      api: deps.api,
      connected: false,
      version: null,
      state: 'not connected yet',
      plugin: null,
      pluginError: null,
    };
  }

  private get attachedPath(): string {
    return join(this.deps.dataDir, 'docker-attached.json');
  }

  private attached(): Attached[] {
    return readJsonList<Attached>(this.attachedPath);
  }

  start(): void {
    this.watch = this.api.watch(
      (e) => this.enqueue(() => this.onEvent(e)),
      (up, why) => {
        if (up && !this.status.connected) this.enqueue(() => this.connected());
        if (!up && this.status.connected) this.deps.log.warn({ why }, 'lost the Docker engine');
        this.status.connected = up;
        this.status.state = why;
      },
    );
  }

  private enqueue(fn: () => Promise<void>): void {
    this.queue = this.queue
      .then(fn)
      .catch((err: Error) => this.deps.log.warn({ err: err.message }, 'Docker event handling failed'));
  }

  /** The engine answers: serve the plugin and catch up with what happened while we were not watching. */
  private async connected(): Promise<void> {
    const v = await this.api.version().catch(() => null);
    this.status.version = v?.Version ?? null;
    this.deps.log.info({ api: this.deps.api, version: this.status.version }, 'connected to the Docker engine');
    if (this.deps.pluginSocket && !this.driver.socket && !this.stopped) {
      try {
        await this.driver.listen(this.deps.pluginSocket);
        this.status.plugin = this.deps.pluginSocket;
        this.status.pluginError = null;
      } catch (err) {
        this.status.pluginError = `cannot serve the network plugin at ${this.deps.pluginSocket}: ${(err as Error).message}`;
        this.deps.log.warn({ err: this.status.pluginError }, 'no Docker network plugin');
      }
    }
    await this.reconcile();
  }

  /** Attached Docker containers that are no longer running are forgotten; running ones get what they should have. */
  private async reconcile(): Promise<void> {
    for (const e of this.deps.datapath.endpoints.local) {
      if (!DOCKER_ID.test(e.container)) continue;
      const c = await this.api.find(e.container);
      if (!c || !c.State.Running) await this.died(e.container);
    }
    for (const id of await this.api.running()) {
      const c = await this.api.find(id);
      if (c?.State.Running) await this.started(c);
    }
  }

  private async onEvent(e: DockerEvent): Promise<void> {
    if (this.stopped || !DOCKER_ID.test(e.Actor.ID)) return;
    if (e.Action === 'die') await this.died(e.Actor.ID);
    else if (e.Action === 'start') {
      const c = await this.api.find(e.Actor.ID);
      if (c?.State.Running) await this.started(c);
    } else if (e.Action === 'destroy') {
      await this.died(e.Actor.ID);
      const list = this.attached();
      if (list.some((a) => a.id === e.Actor.ID))
        this.deps.writes.write(
          this.attachedPath,
          list.filter((a) => a.id !== e.Actor.ID),
        );
    }
  }

  /** A container stopped: its attachment, addresses and names go (names on every host, through gossip). */
  private async died(id: string): Promise<void> {
    const had = await this.deps.datapath.forget(id);
    const names = this.deps.names.remove({ container: id });
    if (had || names > 0)
      this.deps.log.info(
        { container: id.slice(0, 12), names },
        'Docker container stopped; released its addresses and names',
      );
  }

  /** A container runs: reattach it if weft attached it before; names and DNS route for its plugin endpoints. */
  private async started(c: ContainerInfo): Promise<void> {
    const again = this.attached().find((a) => a.id === c.Id);
    if (again && !this.deps.datapath.endpoints.local.some((e) => e.container === c.Id)) {
      try {
        const only = again.only === 'ipv4' || again.only === 'ipv6' ? again.only : undefined;
        await this.attach(c, again.cidrs, again.subnet, again.hostname, again.groups, again.gateway, only);
        this.deps.log.info({ container: c.Id.slice(0, 12) }, 'reattached a restarted Docker container');
      } catch (err) {
        this.deps.log.warn(
          { container: c.Id.slice(0, 12), err: (err as Error).message },
          'could not reattach a restarted Docker container',
        );
      }
    }
    const nets = c.NetworkSettings.Networks ?? {};
    const local = new Set(this.deps.datapath.endpoints.local.map((e) => e.container));
    for (const n of Object.values(nets)) {
      if (!n.EndpointID || !local.has(endpointKey(n.EndpointID)) || !n.IPAddress) continue;
      this.deps.datapath.setGroups(endpointKey(n.EndpointID), this.groupsOf(c));
      if (this.deps.dns) {
        const name = `${containerName(c)}.${this.deps.dns.domain}`;
        this.deps.names.add(name, c.Id, n.IPAddress);
        // Its IPv6 address too, when weft carries it for this endpoint (a network made with --ipv6).
        const ep = this.deps.datapath.endpoints.local.find((e) => e.container === endpointKey(n.EndpointID));
        for (const c6 of ep?.cidrs6 ?? []) this.deps.names.add(name, c.Id, c6.split('/')[0]);
      }
      await this.findInside(c, endpointKey(n.EndpointID), n.MacAddress).catch((err: Error) =>
        this.deps.log.warn(
          { container: c.Id.slice(0, 12), err: err.message },
          'could not find the plugin interface in the container',
        ),
      );
    }
  }

  /**
   * The plugin's interface inside the container: the datapath learns where it is (services translate
   * there), and the DNS server's MAC is fixed on it, as weft attach does.
   */
  private async findInside(c: ContainerInfo, key: string, mac: string): Promise<void> {
    const ns = `/proc/${c.State.Pid}/ns/net`;
    const links = await ipJson<{ ifname: string; address: string }[]>(['link', 'show'], ns);
    const dev = links.find((l) => l.address === mac);
    if (!dev) return;
    this.deps.datapath.setNamespace(key, ns, dev.ifname);
    await announceWhenForwarding(ns, dev.ifname, mac); // Docker brought it up before the bridge forwarded: announce again
    if (this.deps.dns) await pinDns(ns, dev.ifname, { ip: this.deps.dns.ip, bridgeMac: bridgeMac(this.deps.peerName) });
  }

  /** A running container, by name or id, with its process (for its network namespace). */
  async resolve(nameOrId: string): Promise<ContainerInfo> {
    if (!this.status.connected)
      throw new WeftError(
        'unavailable',
        `"${nameOrId}" is not netns:NAME, pid:N or cni:ID, and no Docker engine answers at ${this.deps.api} (${this.status.state})`,
      );
    const c = await this.api.find(nameOrId);
    if (!c) throw new WeftError('not-found', `no Docker container "${nameOrId}"`);
    if (!c.State.Running || !c.State.Pid)
      throw new WeftError('conflict', `Docker container ${containerName(c)} is not running (${c.State.Status})`);
    return c;
  }

  /** `weft attach` of a Docker container; remembered so that a restart of it is attached again. */
  async attach(
    c: ContainerInfo,
    cidrs: string[],
    subnet?: string,
    hostname?: string,
    groups?: string[],
    gateway = false,
    only?: 'ipv4' | 'ipv6',
  ): Promise<{
    container: string;
    cidrs: string[];
    mac: string;
    hostname: string | null;
    groups: string[];
    gateway?: string;
    gateway6?: string;
  }> {
    const g = groups ?? this.groupsOf(c);
    const ep = await this.deps.datapath.attach(
      c.Id,
      cidrs,
      subnet,
      { netns: `/proc/${c.State.Pid}/ns/net`, ifname: 'ethwe' },
      g,
      { gateway, ...(only ? { only } : {}) },
    );
    const list = this.attached().filter((a) => a.id !== c.Id);
    // What it is now: an IPv6-only container stays so when attached again without the option.
    const kept = only ?? (ep.cidrs.length === 0 && (ep.cidrs6 ?? []).length > 0 ? 'ipv6' : undefined);
    this.deps.writes.write(this.attachedPath, [
      ...list,
      {
        id: c.Id,
        cidrs,
        subnet,
        hostname,
        ...(groups ? { groups } : {}),
        ...(gateway ? { gateway } : {}),
        ...(kept ? { only: kept } : {}),
      },
    ]);
    // Like Weave's proxy: a container attached by weft is found by its Docker name.
    const name = hostname ?? (this.deps.dns ? `${containerName(c)}.${this.deps.dns.domain}` : null);
    if (name)
      for (const cidr of [...ep.cidrs, ...(ep.cidrs6 ?? [])]) this.deps.names.add(name, c.Id, cidr.split('/')[0]);
    return {
      container: c.Id,
      cidrs: ep.cidrs,
      ...(ep.cidrs6 ? { cidrs6: ep.cidrs6 } : {}),
      mac: ep.mac,
      hostname: name,
      groups: ep.groups ?? [],
      ...(ep.gateway ? { gateway: ep.gateway } : {}),
      ...(ep.gateway6 ? { gateway6: ep.gateway6 } : {}),
    };
  }

  private groupsOf(c: ContainerInfo): string[] {
    const { groups, bad } = labelGroups(c);
    if (bad.length > 0)
      this.deps.log.warn(
        { container: c.Id.slice(0, 12), bad },
        `label ${GROUP_LABEL} names groups that are not group names; left out`,
      );
    return groups;
  }

  /** `weft detach` of a Docker container: it stays detached when it restarts. */
  forgetAttached(id: string): void {
    const list = this.attached();
    if (list.some((a) => a.id === id))
      this.deps.writes.write(
        this.attachedPath,
        list.filter((a) => a.id !== id),
      );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watch?.stop();
    await this.driver.close();
  }
}

/** The container's name without Docker's leading slash, as a DNS label. */
function containerName(c: ContainerInfo): string {
  return c.Name.replace(/^\//, '')
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-');
}
