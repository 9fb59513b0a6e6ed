// Starting containers: p50/p99 over COUNT containers of each way weft attaches one, on a namespace
// host with a router, against the router's own attach (its API called from a running process) and
// against the reference CNI plugins Debian ships (bridge + host-local) doing the same job in the same
// host (the anchor for CNI). Interleaved per container, in a rotating order, so a drift of the
// machine weighs on all alike. Each container is attached, then removed, before the next.
//
//   npm run build && node dist/bench/attach.js [--count 100]
//
// The timings are taken inside the host's namespace by one process (this file, re-run there with
// --driver), so `ip netns exec` costs none of them: each is what a runtime or user sees, from the exec
// of the command to its exit.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../lib/project-root.js';
import { Cluster, WEFT_CLI } from '../test/harness/cluster.js';
import { numberArg } from './args.js';

const COUNT = numberArg('count', 100);
const WEFT_CNI = join(projectRoot(), 'native', 'build', 'weft-cni');
const REFERENCE = '/usr/lib/cni';
const KINDS = ['api', 'cli', 'cni', 'ref'] as const;
type Kind = (typeof KINDS)[number];

interface DriverArgs {
  dataDir: string;
  api: string;
  names: Record<Kind, string[]>;
  ipamDir: string;
}

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];

function timed(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { input: opts.input, env: opts.env ?? process.env, encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stdout} ${r.stderr}`);
  return ms;
}

function api(addr: string, method: string, path: string, body?: unknown): Promise<number> {
  const [host, port] = addr.split(':');
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port: Number(port),
        method,
        path,
        headers: { host: addr, ...(payload ? { 'content-type': 'application/json' } : {}) },
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () =>
          (res.statusCode ?? 0) < 300
            ? resolve(Number(process.hrtime.bigint() - t0) / 1e6)
            : reject(new Error(`${method} ${path}: ${res.statusCode} ${text}`)),
        );
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** Runs inside the host's namespace: every measurement, printed as JSON. */
async function driver(a: DriverArgs): Promise<void> {
  const add: Record<Kind, number[]> = { api: [], cli: [], cni: [], ref: [] };
  const del: Record<Kind, number[]> = { api: [], cli: [], cni: [], ref: [] };
  const weftConf = JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft-cni', routerAddr: a.api });
  const refConf = JSON.stringify({
    cniVersion: '1.0.0',
    name: 'refnet',
    type: 'bridge',
    bridge: 'cnibr0',
    isGateway: true,
    ipam: { type: 'host-local', subnet: '10.99.0.0/16', dataDir: a.ipamDir },
  });
  const cniEnv = (command: string, name: string, id: string) => ({
    PATH: process.env.PATH,
    CNI_COMMAND: command,
    CNI_CONTAINERID: id,
    CNI_NETNS: `/run/netns/${name}`,
    CNI_IFNAME: 'eth0',
    CNI_PATH: REFERENCE,
  });
  // As bench/cli: without this sandbox's NODE_EXTRA_CA_CERTS, which Node 20 reads at every start (40 ms).
  const cliEnv = { ...process.env };
  delete cliEnv.NODE_EXTRA_CA_CERTS;
  const weft = (args: string[]) =>
    timed(process.execPath, [WEFT_CLI, ...args, '--data-dir', a.dataDir], { env: cliEnv });
  const n = a.names.api.length;
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < KINDS.length; k++) {
      const kind = KINDS[(i + k) % KINDS.length];
      const name = a.names[kind][i];
      const id = `bench${i}${kind}`;
      if (kind === 'api') {
        add.api.push(await api(a.api, 'POST', '/attach', { container: `netns:${name}` }));
        del.api.push(await api(a.api, 'DELETE', `/attach/${encodeURIComponent(`netns:${name}`)}`));
      } else if (kind === 'cli') {
        add.cli.push(weft(['attach', `netns:${name}`]));
        del.cli.push(weft(['detach', `netns:${name}`]));
      } else {
        const [bin, conf] = kind === 'cni' ? [WEFT_CNI, weftConf] : [join(REFERENCE, 'bridge'), refConf];
        add[kind].push(timed(bin, [], { input: conf, env: cniEnv('ADD', name, id) }));
        del[kind].push(timed(bin, [], { input: conf, env: cniEnv('DEL', name, id) }));
      }
    }
  }
  process.stdout.write(JSON.stringify({ add, del }));
}

async function main(): Promise<void> {
  for (const need of [WEFT_CNI, join(REFERENCE, 'bridge'), join(REFERENCE, 'host-local')])
    if (!existsSync(need))
      throw new Error(`needs ${need} (npm install builds weft-cni; apt-get install containernetworking-plugins)`);
  const cluster = await Cluster.create(1, { routerArgs: ['--ipalloc-init', 'consensus=1'] });
  const ipamDir = mkdtempSync(join(tmpdir(), 'weft-bench-host-local-'));
  try {
    const [a] = cluster.hosts;
    await a.launch();
    const names = {} as Record<Kind, string[]>;
    for (const kind of KINDS) {
      names[kind] = [];
      for (let i = 0; i < COUNT; i++) names[kind].push(await cluster.container(`${kind}${i}`));
    }
    const args: DriverArgs = { dataDir: a.dataDir, api: '127.0.0.1:6784', names, ipamDir };
    const r = spawnSync(
      'ip',
      ['netns', 'exec', a.ns, process.execPath, fileURLToPath(import.meta.url), '--driver', JSON.stringify(args)],
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, WEFT_DATA_DIR: a.dataDir } },
    );
    if (r.status !== 0) throw new Error(`the driver failed: ${r.stderr}`);
    const { add, del } = JSON.parse(r.stdout) as { add: Record<Kind, number[]>; del: Record<Kind, number[]> };
    const label: Record<Kind, string> = {
      api: "router's own (its API from a running process)",
      cli: 'weft attach / weft detach (CLI, end to end)',
      cni: 'CNI ADD / DEL, weft-cni (static plugin)',
      ref: 'CNI ADD / DEL, bridge + host-local (anchor)',
    };
    console.log(`${COUNT} containers each way, one host, interleaved (ms: p50 / p99)`);
    for (const kind of KINDS)
      console.log(
        `  ${label[kind].padEnd(48)} add ${pct(add[kind], 0.5).toFixed(1).padStart(6)} / ${pct(add[kind], 0.99).toFixed(1).padStart(6)}   remove ${pct(del[kind], 0.5).toFixed(1).padStart(6)} / ${pct(del[kind], 0.99).toFixed(1).padStart(6)}`,
      );
    const ratio = pct(add.cni, 0.5) / pct(add.ref, 0.5);
    console.log(`  CNI ADD p50, weft / reference plugins: ${ratio.toFixed(2)} (goal <= 1.5)`);
    console.log(`  weft attach p50 over the router's own: +${(pct(add.cli, 0.5) - pct(add.api, 0.5)).toFixed(0)} ms`);
  } finally {
    rmSync(ipamDir, { recursive: true, force: true });
    await cluster.cleanup();
  }
}

const at = process.argv.indexOf('--driver');
if (at > 0) await driver(JSON.parse(process.argv[at + 1]) as DriverArgs);
else await main();
