#!/usr/bin/env node
// weft's CNI plugin (CNI spec 1.0): ADD, DEL, CHECK, VERSION. The runtime runs
// it with the network config on stdin and CNI_* variables; it attaches the
// container through the local weft router (addresses from weft's IPAM, names
// through weft's DNS). DEL succeeds when the router is down and when there is
// nothing to delete, as the spec asks: the router frees what is left when it
// finds the namespace gone.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { RouterUnreachable, callRouter } from './http.js';

const SUPPORTED = ['0.4.0', '1.0.0'];
const DEFAULT_ROUTER = '127.0.0.1:6784';

interface NetConf {
  cniVersion?: string;
  name?: string;
  type?: string;
  /** The weft router's HTTP API (default 127.0.0.1:6784). */
  routerAddr?: string;
  /** Allocate from this subnet of weft's range. */
  subnet?: string;
  /** Register the container's name (from K8S_POD_NAME in CNI_ARGS, or this) in weft's DNS domain. */
  dnsDomain?: string;
  /** Security groups of every container of this network (more from WEFT_GROUP=a,b in CNI_ARGS). */
  groups?: string[];
}

class CniError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly details = '',
  ) {
    super(message);
  }
}

function env(name: string, required: boolean): string {
  const v = process.env[name] ?? '';
  if (required && v === '') throw new CniError(4, `${name} is not set`);
  return v;
}

function readConf(): NetConf {
  let text = '';
  try {
    text = readFileSync(0, 'utf8');
  } catch {
    /* no stdin */
  }
  if (text.trim() === '') return {};
  try {
    const c = JSON.parse(text) as NetConf;
    if (typeof c !== 'object' || c === null) throw new Error('not an object');
    return c;
  } catch (err) {
    throw new CniError(6, 'the network configuration on stdin is not valid JSON', (err as Error).message);
  }
}

async function call(
  conf: NetConf,
  method: string,
  path: string,
  body?: unknown,
  timeoutMs = 5 * 60_000,
): Promise<{ status: number; json: Record<string, unknown> }> {
  let res: { status: number; text: string };
  try {
    res = await callRouter(conf.routerAddr ?? DEFAULT_ROUTER, method, path, body, timeoutMs);
  } catch (err) {
    if (err instanceof RouterUnreachable)
      throw new CniError(11, `the weft router at ${err.addr} does not answer; is it running?`, err.reason);
    throw err;
  }
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(res.text) as Record<string, unknown>;
  } catch {
    json = { error: res.text };
  }
  return { status: res.status, json };
}

/** The name weft uses for this container: stable across ADD, CHECK and DEL. */
function containerOf(): string {
  const id = env('CNI_CONTAINERID', true);
  // Container ids are hex in practice; anything else is hashed into a safe name.
  return /^[A-Za-z0-9_.-]{1,128}$/.test(id)
    ? `cni:${id}`
    : `cni:${createHash('sha256').update(id).digest('hex').slice(0, 32)}`;
}

function cniArg(name: string): string | null {
  for (const kv of env('CNI_ARGS', false).split(';')) {
    const [k, v] = kv.split('=');
    if (k === name && v) return v;
  }
  return null;
}

function podName(): string | null {
  return cniArg('K8S_POD_NAME');
}

/** The config's groups and those of WEFT_GROUP in CNI_ARGS; the router checks the names. */
function groupsOf(conf: NetConf): string[] | undefined {
  if (conf.groups !== undefined && (!Array.isArray(conf.groups) || !conf.groups.every((g) => typeof g === 'string')))
    throw new CniError(6, 'groups must be a list of group names');
  const all = [
    ...(conf.groups ?? []),
    ...(cniArg('WEFT_GROUP') ?? '')
      .split(',')
      .map((g) => g.trim())
      .filter(Boolean),
  ];
  return all.length > 0 ? [...new Set(all)] : undefined;
}

function macOf(netns: string, ifname: string): string {
  const out = execFileSync('ip', ['-n', netns, '-json', 'link', 'show', 'dev', ifname], { encoding: 'utf8' });
  return (JSON.parse(out) as { address: string }[])[0].address;
}

/** `ip -n` wants a name under /run/netns; other paths go through nsenter. */
function ipIn(netnsPath: string, args: string[]): string {
  return execFileSync('nsenter', [`--net=${netnsPath}`, 'ip', ...args], { encoding: 'utf8' });
}

async function add(conf: NetConf): Promise<unknown> {
  const netns = env('CNI_NETNS', true);
  const ifname = env('CNI_IFNAME', true);
  if (!existsSync(netns)) throw new CniError(11, `CNI_NETNS ${netns} does not exist`);
  const container = containerOf();
  const pod = podName();
  const domain = (conf.dnsDomain ?? '').replace(/\.$/, '');
  const hostname = pod && domain ? `${pod}.${domain}` : undefined;
  const r = await call(conf, 'POST', '/attach', {
    container,
    cidrs: [],
    subnet: conf.subnet,
    netns,
    ifname,
    hostname,
    groups: groupsOf(conf),
  });
  if (r.status >= 400)
    throw new CniError(r.status === 503 ? 11 : 999, `weft could not attach ${container}: ${String(r.json.error)}`);
  const cidrs = r.json.cidrs as string[];
  const mac = String(r.json.mac ?? '') || macOf(netns, ifname);
  const status = await call(conf, 'GET', '/report', undefined, 10_000);
  const dns = (status.json.dns ?? {}) as { address?: string | null; domain?: string };
  return {
    cniVersion: conf.cniVersion ?? '1.0.0',
    interfaces: [{ name: ifname, mac, sandbox: netns }],
    ips: cidrs.map((address) => ({ address, interface: 0 })),
    routes: [],
    dns: dns.address
      ? { nameservers: [dns.address.replace(/:53$/, '')], search: [String(dns.domain ?? '').replace(/\.$/, '')] }
      : {},
  };
}

async function del(conf: NetConf): Promise<void> {
  const container = containerOf();
  try {
    const r = await call(conf, 'DELETE', `/attach/${encodeURIComponent(container)}`, undefined, 30_000);
    if (r.status < 400 || r.status === 404) return; // deleted, or nothing to delete
    throw new CniError(999, `weft could not detach ${container}: ${String(r.json.error)}`);
  } catch (err) {
    if (!(err instanceof CniError) || err.code !== 11) throw err;
    // The router is down: remove the interface ourselves; the router frees the address when it
    // starts and finds the namespace gone.
    const netns = env('CNI_NETNS', false);
    const ifname = env('CNI_IFNAME', false) || 'eth0';
    if (netns && existsSync(netns)) {
      try {
        ipIn(netns, ['link', 'del', ifname]);
      } catch {
        /* already gone */
      }
    }
  }
}

async function check(conf: NetConf): Promise<void> {
  const netns = env('CNI_NETNS', true);
  const ifname = env('CNI_IFNAME', true);
  const container = containerOf();
  const r = await call(conf, 'GET', '/report', undefined, 10_000);
  const local = (
    (r.json.datapath as { localEndpoints?: { container: string; cidrs: string[] }[] } | null)?.localEndpoints ?? []
  ).find((e) => e.container === container);
  if (!local) throw new CniError(999, `weft has no attachment for ${container}`);
  let addrs: string[];
  try {
    const out = JSON.parse(ipIn(netns, ['-json', 'addr', 'show', 'dev', ifname])) as {
      addr_info?: { local: string; prefixlen: number }[];
    }[];
    addrs = (out[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
  } catch {
    throw new CniError(999, `interface ${ifname} is missing in ${netns}`);
  }
  for (const c of local.cidrs)
    if (!addrs.includes(c)) throw new CniError(999, `${ifname} in ${netns} lacks its address ${c}`);
}

async function main(): Promise<void> {
  const command = process.env.CNI_COMMAND ?? '';
  if (command === 'VERSION') {
    process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', supportedVersions: SUPPORTED }) + '\n');
    return;
  }
  if (command === '' && process.stdin.isTTY) {
    process.stderr.write(
      'weft-cni: a CNI plugin, run by a container runtime (CNI_COMMAND=ADD|DEL|CHECK|VERSION, config on stdin).\nSee examples/cni/ in the weft repository.\n',
    );
    process.exit(1);
  }
  const conf = readConf();
  if (conf.cniVersion && !SUPPORTED.includes(conf.cniVersion))
    throw new CniError(1, `CNI version ${conf.cniVersion} is not supported`, `supported: ${SUPPORTED.join(', ')}`);
  switch (command) {
    case 'ADD':
      process.stdout.write(JSON.stringify(await add(conf)) + '\n');
      return;
    case 'DEL':
      await del(conf);
      return;
    case 'CHECK':
      await check(conf);
      return;
    default:
      throw new CniError(4, `unknown CNI_COMMAND "${command}": ADD, DEL, CHECK or VERSION`);
  }
}

main().catch((err: Error) => {
  const e = err instanceof CniError ? err : new CniError(999, err.message);
  process.stdout.write(
    JSON.stringify({ cniVersion: '1.0.0', code: e.code, msg: e.message, details: e.details }) + '\n',
  );
  process.exit(1);
});
