// Hosts made of network namespaces on one underlay segment (198.18.0.0/24 on a
// bridge in its own namespace), a weft router per host, and the means to cut
// links, kill and restart routers. Everything it makes is named with the test
// run's id and removed by cleanup(), even when a test fails.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { must, run, type ExecResult } from './exec.js';
import { projectRoot } from '../../lib/project-root.js';
import { HostOvs } from './ovs.js';

export const WEFT_CLI = join(projectRoot(), 'dist', 'cli', 'weft.cjs');

export function runPrefix(runId = process.env.WEFT_TEST_RUN ?? 'solo'): string {
  return `wt${runId}`;
}

/** Removes every namespace of a test run, killing the processes inside first. */
export async function cleanupRun(runId: string): Promise<void> {
  const prefix = runPrefix(runId);
  const list = await run('ip', ['netns', 'list']);
  const names = list.stdout
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n.startsWith(prefix));
  for (const ns of names) await removeNamespace(ns);
  // resolv.conf files weft attach wrote for container namespaces of this run.
  try {
    for (const d of readdirSync('/etc/netns'))
      if (d.startsWith(prefix)) rmSync(`/etc/netns/${d}`, { recursive: true, force: true });
  } catch {
    /* no /etc/netns */
  }
}

async function removeNamespace(ns: string): Promise<void> {
  const pids = await run('ip', ['netns', 'pids', ns]);
  for (const pid of pids.stdout
    .split('\n')
    .map(Number)
    .filter((p) => p > 0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  await run('ip', ['netns', 'del', ns]);
}

const live = new Set<Cluster>();
let interruptHandled = false;

/**
 * A bench or script interrupted (Ctrl-C, kill) removes what its clusters made before it exits.
 * Under vitest the global teardown does that for the whole run instead, so no handler is added.
 */
function onInterrupt(c: Cluster): void {
  live.add(c);
  if (interruptHandled || process.env.VITEST) return;
  interruptHandled = true;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`\n${sig}: removing the test namespaces...\n`);
      void Promise.allSettled([...live].map((x) => x.cleanup())).then(() =>
        process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1)),
      );
    });
  }
}

/** Router arguments for three test hosts that find each other and agree on addresses quickly. */
export const FAST_THREE_HOSTS = [
  '--heartbeat-interval',
  '500ms',
  '--gossip-interval',
  '1s',
  '--ipalloc-init',
  'consensus=3',
];

export interface HostOptions {
  /** Extra router arguments for every launch on this host. */
  routerArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** Run an Open vSwitch on these hosts (1-based indexes, or true for all); their routers use --datapath ovs. */
  ovs?: boolean | number[];
}

export class Host {
  readonly dataDir: string;
  routerArgs: string[] = [];
  env: NodeJS.ProcessEnv = {};
  /** This host's Open vSwitch, when it has one. */
  ovs: HostOvs | null = null;

  constructor(
    readonly cluster: Cluster,
    readonly index: number,
    readonly ns: string,
    readonly ip: string,
    /** The underlay-side end of this host's link (in the underlay namespace). */
    readonly uplink: string,
  ) {
    this.dataDir = join(cluster.workDir, `host${index}`);
  }

  get nickname(): string {
    return `host${this.index}`;
  }

  /** Runs a command inside this host's namespace. */
  exec(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', this.ns, cmd, ...args], {
      timeoutMs: opts.timeoutMs,
      env: { ...process.env, ...this.env, ...opts.env },
    });
  }

  /** Runs the weft CLI on this host, with its data dir. */
  weft(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ExecResult> {
    return this.exec(process.execPath, [WEFT_CLI, ...args], {
      ...opts,
      env: { WEFT_DATA_DIR: this.dataDir, ...opts.env },
    });
  }

  async launch(peers: string[] = [], extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<ExecResult> {
    // A process unless this host has its own Docker engine (a dockerd elsewhere on the machine must not matter).
    const mode = this.env.DOCKER_HOST ? [] : ['--no-docker'];
    const r = await this.weft(
      ['launch', ...mode, '--nickname', this.nickname, ...this.routerArgs, ...extra, ...peers],
      { env, timeoutMs: 40_000 },
    );
    if (r.code !== 0) throw new Error(`weft launch on ${this.nickname} failed: ${r.stderr.trim()}`);
    return r;
  }

  /** The pid of the running router, from its data dir. */
  routerPid(): number | null {
    try {
      const info = JSON.parse(readFileSync(join(this.dataDir, 'router.json'), 'utf8')) as { pid: number };
      return info.pid;
    } catch {
      return null;
    }
  }

  /** Kills the router with SIGKILL (a crash: no goodbye to the peers). */
  async kill(): Promise<void> {
    const pid = this.routerPid();
    if (!pid) throw new Error(`no router pid on ${this.nickname}`);
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        break;
      }
      await sleep(20);
    }
    // A killed router cannot remove its router.json; the CLI ignores stale ones, as it must.
  }

  async report<T = Record<string, unknown>>(): Promise<T> {
    const r = await this.weft(['report', '--json']);
    if (r.code !== 0) throw new Error(`weft report on ${this.nickname} failed: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as T;
  }

  /** Takes this host's underlay link down (a partition), or brings it back. */
  async cut(): Promise<void> {
    await must('ip', ['-n', this.cluster.underlayNs, 'link', 'set', this.uplink, 'down']);
  }

  async restore(): Promise<void> {
    await must('ip', ['-n', this.cluster.underlayNs, 'link', 'set', this.uplink, 'up']);
  }
}

export class Cluster {
  readonly hosts: Host[] = [];
  /** Container namespaces made by container(): removed by cleanup(). */
  readonly containers: string[] = [];
  readonly workDir: string;
  readonly id: string;
  readonly underlayNs: string;
  private cleaned = false;

  private constructor() {
    onInterrupt(this);
    this.id = `${runPrefix()}${randomBytes(3).toString('hex')}`;
    this.underlayNs = `${this.id}-ul`;
    this.workDir = mkdtempSync(join(tmpdir(), `weft-${this.id}-`));
  }

  /** Creates n hosts on one underlay segment, 198.18.0.1 .. 198.18.0.n. */
  static async create(n: number, opts: HostOptions = {}): Promise<Cluster> {
    if (!existsSync(WEFT_CLI)) throw new Error(`${WEFT_CLI} is missing: run "npm run build" first (npm test does)`);
    const c = new Cluster();
    try {
      await must('ip', ['netns', 'add', c.underlayNs]);
      await must('ip', ['-n', c.underlayNs, 'link', 'add', 'br0', 'type', 'bridge']);
      await must('ip', ['-n', c.underlayNs, 'link', 'set', 'br0', 'up']);
      for (let i = 1; i <= n; i++) await c.addHost(i, opts);
    } catch (err) {
      await c.cleanup();
      throw err;
    }
    return c;
  }

  private async addHost(i: number, opts: HostOptions): Promise<Host> {
    const ns = `${this.id}-h${i}`;
    const uplink = `h${i}`;
    const ip = `198.18.0.${i}`;
    await must('ip', ['netns', 'add', ns]);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    await must('ip', [
      '-n',
      this.underlayNs,
      'link',
      'add',
      uplink,
      'type',
      'veth',
      'peer',
      'name',
      'eth0',
      'netns',
      ns,
    ]);
    await must('ip', ['-n', this.underlayNs, 'link', 'set', uplink, 'master', 'br0', 'up']);
    await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    const h = new Host(this, i, ns, ip, uplink);
    h.routerArgs = opts.routerArgs ?? [];
    h.env = opts.env ?? {};
    this.hosts.push(h);
    // A veth hands UDP on with its checksum not yet computed (a NIC would compute it): OVS's
    // userspace tunnel end takes such VXLAN packets for corrupt. The kernel's own VXLAN device does not mind.
    if (opts.ovs) await must('ip', ['netns', 'exec', ns, 'ethtool', '-K', 'eth0', 'tx', 'off']);
    if (opts.ovs === true || (Array.isArray(opts.ovs) && opts.ovs.includes(i))) {
      h.ovs = new HostOvs(ns, join(this.workDir, `ovs${i}`));
      await h.ovs.start('eth0', `${ip}/24`);
      h.routerArgs = [...h.ovs.routerArgs, ...h.routerArgs];
    } else {
      await must('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    }
    return h;
  }

  /** Every host launched (each given the ones before it as peers), once all see every peer. */
  async launchAll(): Promise<Host[]> {
    for (const h of this.hosts) await h.launch(this.hosts.slice(0, h.index - 1).map((x) => x.ip));
    for (const h of this.hosts)
      await eventually(
        `${h.nickname} sees ${this.hosts.length} peers`,
        async () => (await h.report<{ peers: unknown[] }>()).peers.length === this.hosts.length,
      );
    return this.hosts;
  }

  /** A container attached on a host with `weft attach` (in these security groups); its overlay address. */
  async attached(
    h: Host,
    label: string,
    ...groups: string[]
  ): Promise<{ label: string; ns: string; ip: string; ip6?: string }> {
    const ns = await this.container(label);
    const r = await h.weft(['attach', ...groups.flatMap((g) => ['--group', g]), `netns:${ns}`]);
    if (r.code !== 0) throw new Error(`attach ${label} on ${h.nickname}: ${r.stderr}`);
    // "10.32.0.1/12", and with a router run with --ipv6 "... fd77:6566:7400::1/48" after it.
    const [ip, ip6] = r.stdout
      .trim()
      .split(/\s+/)
      .map((c) => c.split('/')[0]);
    return { label, ns, ip, ...(ip6 !== undefined ? { ip6 } : {}) };
  }

  /**
   * A machine on the underlay that is no peer: a namespace on the same segment at 198.18.0.(200+n),
   * running no router (removed by cleanup()). An address of a real host it borrows to forge datagrams
   * goes on its loopback (borrow()), where it answers no ARP for it and never announces it: the real
   * host keeps its traffic.
   */
  async stranger(n = 1): Promise<{ ns: string; ip: string }> {
    const ns = `${this.id}-s${n}`;
    const ip = `198.18.0.${200 + n}`;
    await must('ip', ['netns', 'add', ns]);
    this.containers.push(ns);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    await must('ip', [
      '-n',
      this.underlayNs,
      'link',
      'add',
      `s${n}`,
      'type',
      'veth',
      'peer',
      'name',
      'eth0',
      'netns',
      ns,
    ]);
    await must('ip', ['-n', this.underlayNs, 'link', 'set', `s${n}`, 'master', 'br0', 'up']);
    await must('ip', [
      'netns',
      'exec',
      ns,
      'sysctl',
      '-qw',
      'net.ipv4.conf.all.arp_ignore=1',
      'net.ipv4.conf.all.arp_announce=2',
    ]);
    await must('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    return { ns, ip };
  }

  /** Gives a stranger another host's address to send from (on its loopback: see stranger()). */
  async borrow(ns: string, ip: string): Promise<void> {
    const six = ip.includes(':');
    await must('ip', ['-n', ns, 'addr', 'add', `${ip}/${six ? 128 : 32}`, 'dev', 'lo', ...(six ? ['nodad'] : [])]);
  }

  /** A "container": a named network namespace, attached with `weft attach netns:NAME`. */
  async container(label: string): Promise<string> {
    const ns = `${this.id}-${label}`;
    await must('ip', ['netns', 'add', ns]);
    this.containers.push(ns);
    return ns;
  }

  /** Kills every process in the hosts' namespaces, removes the namespaces and the work dir. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    live.delete(this);
    for (const ns of this.containers) {
      await removeNamespace(ns);
      rmSync(`/etc/netns/${ns}`, { recursive: true, force: true });
    }
    for (const h of this.hosts) h.ovs?.stop();
    for (const h of this.hosts) await removeNamespace(h.ns);
    await removeNamespace(this.underlayNs);
    if (process.env.WEFT_KEEP_LOGS) process.stderr.write(`kept ${this.workDir}\n`);
    else rmSync(this.workDir, { recursive: true, force: true });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until `read` gives the same for a whole `quietMs` (a cut connection's count stops moving). */
export async function steady(what: string, read: () => unknown, timeoutMs = 10_000, quietMs = 1000): Promise<void> {
  await eventually(
    what,
    async () => {
      const before = JSON.stringify(read());
      await sleep(quietMs);
      return JSON.stringify(read()) === before;
    },
    timeoutMs,
  );
}

/** Polls until check() returns a truthy value or the time runs out; the error says what was last seen. */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | null | undefined | false>,
  timeoutMs = 20_000,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs}ms waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`,
      );
    }
    await sleep(everyMs);
  }
}
