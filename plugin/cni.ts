// The CNI plugin's work, done inside the router. The binary a runtime runs
// (native/weft-cni.c, or cli/weft-cni.ts where Node is installed) only hands the
// request over (POST /cni: the command, the CNI_* variables and the config text)
// and prints the answer, so a container start costs no Node start-up. This file
// speaks the CNI spec (1.1, and the older versions runtimes still send): it checks
// the config, attaches through the datapath (with the host as the pod's gateway),
// shapes the result for the config's version, and turns every failure into the
// spec's error codes.
import { existsSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import type { Datapath } from '../datapath/datapath.js';
import { hostIfName } from '../datapath/attach.js';
import type { NameService } from '../dns/table.js';
import { WeftError } from '../lib/errors.js';
import { GROUP_NAME, canonicalDnsName, checkIfName, isIpFamilies, subnetFamilyProblem } from '../net/validate.js';
import { ipJson } from '../net/command.js';
import { CNI_VERSIONS, cniVersionOf } from './cni-versions.js';

/** The spec versions weft speaks; results for 0.3.x and 0.4.0 carry each address's IP version. */

/** The spec's well-known error codes (SPEC.md, "Error"); 100 and up are weft's own. */
const CNI_CODES = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnvironment: 4,
  ioFailure: 5,
  decodeFailure: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  notAvailable: 50,
  /** weft could not do it: the message says why. */
  failed: 100,
  /** CHECK found the container's network not as ADD left it. */
  checkFailed: 101,
} as const;

export class CniError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly details = '',
  ) {
    super(message);
  }
}

/** What the plugin binary sends: its environment's CNI_* values and the config it read on stdin. */
export interface CniRequest {
  command: string;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  path?: string;
  config: string;
}

/** What the plugin binary prints on stdout, and whether it exits 0. */
export interface CniAnswer {
  ok: boolean;
  output: string;
}

/** A network config (the config list's `weft-cni` entry, as the runtime derives it). */
export interface NetConf {
  cniVersion: string;
  name?: string;
  /** Allocate from this subnet of weft's range. */
  subnet?: string;
  /** Register the pod's name (K8S_POD_NAME in CNI_ARGS) in this DNS domain. */
  dnsDomain?: string;
  /** Security groups of every container of this network (more from WEFT_GROUP=a,b in CNI_ARGS). */
  groups?: string[];
  /** The default route through the host (its address in the subnet, exposed): default true. */
  gateway: boolean;
  /**
   * The pods' address families, as Kubernetes names them: ["IPv4"], ["IPv6"] (IPv6-only pods, a router
   * with --ipv6), or both (the default: each family the router carries).
   */
  ipFamilies?: ('IPv4' | 'IPv6')[];
  prevResult?: unknown;
  validAttachments?: { containerID: string; ifname: string }[];
}

const FIELD_TYPES: Record<string, string> = {
  cniVersion: 'string',
  name: 'string',
  type: 'string',
  routerAddr: 'string',
  subnet: 'string',
  dnsDomain: 'string',
  gateway: 'boolean',
};

/** Reads and checks a network config (stdin's text); a CniError with the spec's code when it is wrong. */
export function parseNetConf(text: string): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CniError(CNI_CODES.decodeFailure, 'the network configuration is not valid JSON', (err as Error).message);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new CniError(CNI_CODES.decodeFailure, 'the network configuration is not a JSON object');
  const c = raw as Record<string, unknown>;
  for (const [field, type] of Object.entries(FIELD_TYPES))
    if (c[field] !== undefined && typeof c[field] !== type)
      throw new CniError(CNI_CODES.invalidConfig, `invalid network configuration: ${field} must be a ${type}`);
  if (c.cniVersion === undefined)
    throw new CniError(CNI_CODES.invalidConfig, 'the network configuration has no cniVersion');
  const version = c.cniVersion as string;
  if (!CNI_VERSIONS.includes(version))
    throw new CniError(
      CNI_CODES.incompatibleVersion,
      `CNI version ${version} is not supported`,
      `supported: ${CNI_VERSIONS.join(', ')}`,
    );
  if (
    c.groups !== undefined &&
    (!Array.isArray(c.groups) ||
      c.groups.length > 64 ||
      !c.groups.every((g) => typeof g === 'string' && GROUP_NAME.test(g)))
  )
    throw new CniError(
      CNI_CODES.invalidConfig,
      'invalid network configuration: groups must be a list of group names (lower-case letters, digits, _ . -; up to 63)',
    );
  const families = c.ipFamilies;
  if (families !== undefined && !isIpFamilies(families))
    throw new CniError(
      CNI_CODES.invalidConfig,
      'invalid network configuration: ipFamilies must be ["IPv4"], ["IPv6"] or ["IPv4", "IPv6"]',
    );
  const valid = c['cni.dev/valid-attachments'];
  if (
    valid !== undefined &&
    (!Array.isArray(valid) ||
      !valid.every(
        (a) =>
          typeof a === 'object' &&
          a !== null &&
          typeof (a as { containerID?: unknown }).containerID === 'string' &&
          typeof (a as { ifname?: unknown }).ifname === 'string',
      ))
  )
    throw new CniError(
      CNI_CODES.invalidConfig,
      'invalid network configuration: cni.dev/valid-attachments must be a list of {containerID, ifname}',
    );
  return {
    cniVersion: version,
    ...(c.name !== undefined ? { name: c.name as string } : {}),
    ...(c.subnet !== undefined ? { subnet: c.subnet as string } : {}),
    ...(c.dnsDomain !== undefined ? { dnsDomain: c.dnsDomain as string } : {}),
    ...(c.groups !== undefined ? { groups: c.groups as string[] } : {}),
    gateway: c.gateway !== false,
    ...(families !== undefined ? { ipFamilies: families } : {}),
    ...(c.prevResult !== undefined ? { prevResult: c.prevResult } : {}),
    ...(valid !== undefined ? { validAttachments: valid as { containerID: string; ifname: string }[] } : {}),
  };
}

/** The name weft gives a CNI container: stable across ADD, CHECK, DEL and GC. */
export function cniContainerKey(containerId: string): string {
  // Container ids are hex in practice; anything else is hashed into a safe name.
  return /^[A-Za-z0-9_.-]{1,128}$/.test(containerId)
    ? `cni:${containerId}`
    : `cni:${createHash('sha256').update(containerId).digest('hex').slice(0, 32)}`;
}

function cniArg(args: string, name: string): string | null {
  for (const kv of args.split(';')) {
    const i = kv.indexOf('=');
    if (i > 0 && kv.slice(0, i) === name && i < kv.length - 1) return kv.slice(i + 1);
  }
  return null;
}

/** A version string as numbers, for comparing. */
function older(a: string, b: string): boolean {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number));
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i] < y[i];
  return false;
}

export interface AttachmentFacts {
  ifname: string;
  netns: string;
  mac: string;
  mtu: number;
  hostIf: string;
  hostMac: string;
  cidrs: string[];
  /** IPv6 addresses (a router run with --ipv6). */
  cidrs6?: string[];
  gateway?: string;
  /** The host's IPv6 address in the container's IPv6 subnet: its IPv6 default route. */
  gateway6?: string;
  /** weft's DNS server (its IPv6 address too, for a dual-stack pod). */
  dns: { nameserver?: string; nameserver6?: string; domain: string } | null;
}

/** An ADD result in the shape of the config's version (0.3.x and 0.4.0 name each address's IP version). */
export function cniResult(version: string, a: AttachmentFacts): Record<string, unknown> {
  const legacy = older(version, '1.0.0');
  return {
    cniVersion: version,
    interfaces: [
      { name: a.hostIf, mac: a.hostMac },
      { name: a.ifname, mac: a.mac, mtu: a.mtu, sandbox: a.netns },
    ],
    ips: a.cidrs
      .map((address) => ({
        ...(legacy ? { version: '4' } : {}),
        address,
        ...(a.gateway ? { gateway: a.gateway } : {}),
        interface: 1,
      }))
      .concat(
        (a.cidrs6 ?? []).map((address) => ({
          ...(legacy ? { version: '6' } : {}),
          address,
          ...(a.gateway6 ? { gateway: a.gateway6 } : {}),
          interface: 1,
        })),
      ),
    routes: [
      ...(a.gateway ? [{ dst: '0.0.0.0/0', gw: a.gateway }] : []),
      ...(a.gateway6 ? [{ dst: '::/0', gw: a.gateway6 }] : []),
    ],
    dns: a.dns
      ? {
          nameservers: [a.dns.nameserver, a.dns.nameserver6].filter((n) => n !== undefined),
          domain: a.dns.domain,
          search: [a.dns.domain],
        }
      : {},
  };
}

export interface CniDeps {
  datapath: Datapath | null;
  names: NameService;
  /** weft's DNS server on the bridge (address, IPv6 address with --ipv6, and domain, no trailing dot), when it runs. */
  dns: { ip: string; ip6?: string; domain: string } | null;
  /** IPAM's state word ('ready', 'idle ...', or why it waits). */
  ipamState: () => string;
}

/** Answers CNI requests the plugin binary forwards. */
export class CniService {
  constructor(private readonly deps: CniDeps) {}

  async handle(req: CniRequest): Promise<CniAnswer> {
    // An answer or error echoes the config's version when it has one, even if the rest is wrong.
    let version = cniVersionOf(req.config);
    try {
      if (req.command === 'VERSION')
        return { ok: true, output: JSON.stringify({ cniVersion: version, supportedVersions: CNI_VERSIONS }) };
      if (!['ADD', 'DEL', 'CHECK', 'STATUS', 'GC'].includes(req.command))
        throw new CniError(
          CNI_CODES.invalidEnvironment,
          `unknown CNI_COMMAND "${req.command.slice(0, 32)}": ADD, DEL, CHECK, STATUS, GC or VERSION`,
        );
      const conf = parseNetConf(req.config);
      version = conf.cniVersion;
      switch (req.command) {
        case 'ADD':
          return { ok: true, output: JSON.stringify(await this.add(conf, req)) };
        case 'DEL':
          await this.del(req);
          return { ok: true, output: '' };
        case 'CHECK':
          await this.check(conf, req);
          return { ok: true, output: '' };
        case 'STATUS':
          this.status(conf);
          return { ok: true, output: '' };
        default:
          await this.gc(conf);
          return { ok: true, output: '' };
      }
    } catch (err) {
      const e = asCniError(err);
      return {
        ok: false,
        output: JSON.stringify({ cniVersion: version, code: e.code, msg: e.message, details: e.details }),
      };
    }
  }

  private datapath(): Datapath {
    if (!this.deps.datapath)
      throw new CniError(CNI_CODES.notAvailable, 'this weft router runs without a datapath (--datapath none)');
    return this.deps.datapath;
  }

  private async add(conf: NetConf, req: CniRequest): Promise<Record<string, unknown>> {
    // Checked at ADD only: a config written with a mismatch must still let DEL, STATUS and GC through.
    const mismatch = subnetFamilyProblem(conf.subnet, conf.ipFamilies);
    if (mismatch) throw new CniError(CNI_CODES.invalidConfig, `invalid network configuration: ${mismatch}`);
    const { containerId, netns, ifname } = required(req, ['containerId', 'netns', 'ifname']);
    if (!existsSync(netns)) throw new CniError(CNI_CODES.unknownContainer, `CNI_NETNS ${netns} does not exist`);
    const d = this.datapath();
    const container = cniContainerKey(containerId);
    const mine = d.endpoints.local.some((e) => e.container === container);
    const pod = cniArg(req.args ?? '', 'K8S_POD_NAME');
    const domain = (conf.dnsDomain ?? '').replace(/\.$/, '');
    const hostname = pod && domain ? canonicalDnsName(`${pod}.${domain}`, 'pod name') : undefined;
    const only = conf.ipFamilies?.length === 1 ? (conf.ipFamilies[0] === 'IPv4' ? 'ipv4' : 'ipv6') : undefined;
    const ep = await d.attach(container, [], conf.subnet, { netns, ifname }, groupsOf(conf, req), {
      gateway: conf.gateway,
      ...(only ? { only } : {}),
      fresh: !mine, // an interface of that name in the container, not weft's, is an error (the spec's rule)
    });
    if (hostname)
      for (const c of [...ep.cidrs, ...(ep.cidrs6 ?? [])]) this.deps.names.add(hostname, container, c.split('/')[0]);
    const hostIf = hostIfName(container);
    const dns = this.deps.dns;
    const result = cniResult(conf.cniVersion, {
      ifname,
      netns,
      mac: ep.mac,
      mtu: d.mtu,
      hostIf,
      hostMac: readFileSync(`/sys/class/net/${hostIf}/address`, 'utf8').trim(),
      cidrs: ep.cidrs,
      ...(ep.cidrs6 ? { cidrs6: ep.cidrs6 } : {}),
      ...(ep.gateway ? { gateway: ep.gateway } : {}),
      ...(ep.gateway6 ? { gateway6: ep.gateway6 } : {}),
      dns: dns
        ? {
            ...(ep.cidrs.length > 0 ? { nameserver: dns.ip } : {}),
            ...(dns.ip6 && (ep.cidrs6 ?? []).length > 0 ? { nameserver6: dns.ip6 } : {}),
            domain: domain || dns.domain,
          }
        : null,
    });
    return result;
  }

  /** Best effort, and success when there is nothing to delete (the spec's rule for DEL). */
  private async del(req: CniRequest): Promise<void> {
    const { containerId } = required(req, ['containerId']);
    const d = this.deps.datapath;
    if (!d) return;
    const container = cniContainerKey(containerId);
    if (d.endpoints.local.some((e) => e.container === container)) await d.detach(container);
    else await d.freeAddresses(container); // an ADD that failed half way may hold one
  }

  private async check(conf: NetConf, req: CniRequest): Promise<void> {
    const { containerId, netns, ifname } = required(req, ['containerId', 'netns', 'ifname']);
    if (older(conf.cniVersion, '0.4.0'))
      throw new CniError(
        CNI_CODES.incompatibleVersion,
        `CHECK needs CNI 0.4.0 or later (the config says ${conf.cniVersion})`,
      );
    const prev = conf.prevResult as
      { ips?: { address?: unknown }[]; routes?: { dst?: unknown; gw?: unknown }[] } | undefined;
    if (typeof prev !== 'object' || prev === null)
      throw new CniError(CNI_CODES.invalidConfig, 'CHECK needs prevResult in the network configuration');
    const d = this.datapath();
    const container = cniContainerKey(containerId);
    const ep = d.endpoints.local.find((e) => e.container === container);
    if (!ep) throw new CniError(CNI_CODES.checkFailed, `weft has no attachment for container ${containerId}`);
    if (!existsSync(netns)) throw new CniError(CNI_CODES.unknownContainer, `CNI_NETNS ${netns} does not exist`);
    let addrs: string[];
    try {
      const out = await ipJson<{ addr_info?: { family: string; local: string; prefixlen: number }[] }[]>(
        ['addr', 'show', 'dev', ifname],
        netns,
      );
      addrs = (out[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
    } catch {
      throw new CniError(CNI_CODES.checkFailed, `interface ${ifname} is missing in ${netns}`);
    }
    for (const ipc of prev.ips ?? []) {
      const a = String(ipc.address);
      if (!ep.cidrs.includes(a) && !(ep.cidrs6 ?? []).includes(a))
        throw new CniError(CNI_CODES.checkFailed, `${a} of prevResult is not an address weft holds for ${containerId}`);
      if (!addrs.includes(a)) throw new CniError(CNI_CODES.checkFailed, `${ifname} in ${netns} lacks its address ${a}`);
    }
    for (const [dst, family] of [
      ['0.0.0.0/0', '-4'],
      ['::/0', '-6'],
    ]) {
      const defaults = (prev.routes ?? []).filter((r) => r.dst === dst && typeof r.gw === 'string');
      if (defaults.length === 0) continue;
      const routes = await ipJson<{ dst: string; gateway?: string }[]>([family, 'route', 'show', 'default'], netns);
      for (const r of defaults)
        if (!routes.some((x) => x.gateway === r.gw))
          throw new CniError(CNI_CODES.checkFailed, `the default route via ${String(r.gw)} is missing in ${netns}`);
    }
  }

  private status(conf: NetConf): void {
    void conf;
    this.datapath();
    const state = this.deps.ipamState();
    if (state !== 'ready' && !state.startsWith('idle'))
      throw new CniError(CNI_CODES.notAvailable, `weft's address allocator is not ready: ${state}`);
  }

  /** Detaches every CNI container of this router that the runtime no longer lists. */
  private async gc(conf: NetConf): Promise<void> {
    const d = this.deps.datapath;
    if (!d) return;
    const valid = new Set((conf.validAttachments ?? []).map((a) => cniContainerKey(a.containerID)));
    const failures: string[] = [];
    for (const ep of [...d.endpoints.local]) {
      if (!ep.container.startsWith('cni:') || valid.has(ep.container)) continue;
      await d.detach(ep.container).catch((err: Error) => failures.push(`${ep.container}: ${err.message}`));
    }
    if (failures.length > 0)
      throw new CniError(CNI_CODES.failed, `${failures.length} attachments could not be removed`, failures.join('; '));
  }
}

function required<K extends 'containerId' | 'netns' | 'ifname'>(req: CniRequest, names: K[]): Record<K, string> {
  const env = { containerId: 'CNI_CONTAINERID', netns: 'CNI_NETNS', ifname: 'CNI_IFNAME' };
  const missing = names.filter((n) => !req[n]);
  if (missing.length > 0)
    throw new CniError(CNI_CODES.invalidEnvironment, `${missing.map((n) => env[n]).join(', ')} not set`);
  // The interface name goes into ip commands: only a real interface name is taken.
  if (req.ifname !== undefined && names.includes('ifname' as K))
    try {
      checkIfName(req.ifname, 'CNI_IFNAME');
    } catch (err) {
      throw new CniError(CNI_CODES.invalidEnvironment, (err as Error).message);
    }
  return Object.fromEntries(names.map((n) => [n, req[n]!])) as Record<K, string>;
}

/** The config's groups and those of WEFT_GROUP in CNI_ARGS. */
function groupsOf(conf: NetConf, req: CniRequest): string[] | undefined {
  const all = [
    ...(conf.groups ?? []),
    ...(cniArg(req.args ?? '', 'WEFT_GROUP') ?? '')
      .split(',')
      .map((g) => g.trim())
      .filter(Boolean),
  ];
  const bad = all.find((g) => !GROUP_NAME.test(g));
  if (bad !== undefined)
    throw new CniError(
      CNI_CODES.invalidEnvironment,
      `WEFT_GROUP in CNI_ARGS: "${bad.slice(0, 64)}" is not a group name`,
    );
  return all.length > 0 ? [...new Set(all)].slice(0, 64) : undefined;
}

/** weft's own failures in the spec's words: a wait is "try again later", a wrong value an invalid config. */
function asCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  const message = (err as Error).message ?? String(err);
  if (err instanceof WeftError) {
    if (err.code === 'pending') return new CniError(CNI_CODES.tryAgainLater, message);
    if (err.code === 'invalid') return new CniError(CNI_CODES.invalidConfig, message);
    if (err.code === 'unavailable') return new CniError(CNI_CODES.notAvailable, message);
  }
  return new CniError(CNI_CODES.failed, message);
}
