#!/usr/bin/env node
// `npm run image`: builds the router image weft/router:VERSION with no registry,
// from this machine's own node binary (or `-- --node PATH`: the newest LTS from
// the npm package `node`), the tools the router runs (iproute2,
// nftables, nsenter) and the shared libraries `ldd` lists for them, plus the
// compiled router and its production node_modules; then `docker import`s it into
// the engine at DOCKER_HOST (or /var/run/docker.sock). plugin/Dockerfile builds
// the same router from the Node 26 (LTS) base image where a registry is reachable.
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DockerApi, defaultDockerApi } from './docker-api.js';
import { VERSION } from '../lib/version.js';
import { projectRoot } from '../lib/project-root.js';
import { ROUTER_ENV } from '../lib/router-env.js';

export const ROUTER_IMAGE_REPO = 'weft/router';
export const ROUTER_IMAGE = `${ROUTER_IMAGE_REPO}:${VERSION}`;

/** What the router runs, and a few tools for looking inside it (docker exec weft getent hosts NAME). */
const TOOLS = ['ip', 'bridge', 'nft', 'nsenter', 'sh', 'sleep', 'cat', 'ping', 'getent'];
/** Taken when installed: without conntrack, revoked security group rules do not cut open flows. */
const OPTIONAL_TOOLS = ['conntrack'];
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const ENTRYPOINT = ['/usr/local/bin/node', '/weft/dist/router/main.js'];

function which(tool: string): string {
  for (const d of PATH.split(':')) {
    const p = join(d, tool);
    if (existsSync(p)) return p;
  }
  const hint = tool === 'nft' ? ' (Debian: apt-get install nftables)' : '';
  throw new Error(`cannot build the image: "${tool}" is not installed${hint}`);
}

/** The shared libraries a binary needs, by the paths its loader will look at. */
function libraries(binary: string): string[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]);
  }
  return libs;
}

/** Copies a file's content to the same path under root (through the directory's real path, so merged /usr works). */
function place(root: string, path: string, as = path): void {
  const target = join(root, realpathSync(dirname(as)), basename(as));
  mkdirSync(dirname(target), { recursive: true });
  cpSync(realpathSync(path), target, { dereference: true });
}

/**
 * Builds the root filesystem in a fresh directory and returns it. `node` is the Node binary the
 * image runs (default: this one); `npm run image -- --node PATH` takes another, e.g. the newest LTS
 * from the npm package `node` (the addon is Node-API: one build loads on every version).
 */
export function buildRootfs(node: string = process.execPath): string {
  const project = projectRoot();
  if (!existsSync(join(project, 'dist', 'router', 'main.js')))
    throw new Error('dist/ is missing: run npm run build first');
  const root = mkdtempSync(join(tmpdir(), 'weft-image-'));
  try {
    fillRootfs(root, project, node);
  } catch (err) {
    rmSync(root, { recursive: true, force: true });
    throw err;
  }
  return root;
}

function fillRootfs(root: string, project: string, node: string): void {
  // Debian's merged /usr: /bin, /lib ... are links into /usr; mirror them so the loader paths hold.
  for (const top of ['bin', 'sbin', 'lib', 'lib64']) {
    const p = `/${top}`;
    if (existsSync(p) && lstatSync(p).isSymbolicLink()) {
      mkdirSync(join(root, 'usr', readlinkSync(p).replace(/^usr\//, '')), { recursive: true });
      symlinkSync(readlinkSync(p), join(root, top));
    }
  }
  const optional = OPTIONAL_TOOLS.flatMap((t) => {
    try {
      return [which(t)];
    } catch {
      console.warn(`warning: ${t} is not installed; the image goes without it`);
      return [];
    }
  });
  const binaries: [string, string][] = [
    [node, '/usr/local/bin/node'],
    ...[...TOOLS.map(which), ...optional].map((p): [string, string] => [p, p]),
  ];
  const libs = new Set<string>();
  for (const [from, to] of binaries) {
    place(root, from, to);
    for (const l of libraries(from)) libs.add(l);
  }
  for (const l of libs) place(root, l);
  const etc = join(root, 'etc');
  mkdirSync(etc, { recursive: true });
  writeFileSync(join(etc, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  writeFileSync(join(etc, 'group'), 'root:x:0:\n');
  writeFileSync(join(etc, 'nsswitch.conf'), 'hosts: files dns\nnetworks: files\n');
  for (const f of ['protocols', 'services']) if (existsSync(`/etc/${f}`)) cpSync(`/etc/${f}`, join(etc, f));
  for (const d of ['tmp', 'run', 'root', 'var/lib/weft']) mkdirSync(join(root, d), { recursive: true });
  // The CLI, for `docker exec weft weft status` and the Kubernetes init step (`weft setup-cni`).
  writeFileSync(
    join(root, 'usr', 'local', 'bin', 'weft'),
    '#!/bin/sh\nexec /usr/local/bin/node /weft/dist/cli/weft.cjs "$@"\n',
    { mode: 0o755 },
  );
  chmodSync(join(root, 'tmp'), 0o1777);
  // The router: compiled code, the native addon, production dependencies only.
  const app = join(root, 'weft');
  // Every compiled component (tests, benchmarks and examples are not the router's).
  for (const part of readdirSync(join(project, 'dist'))) {
    if (!['test', 'bench', 'examples'].includes(part))
      cpSync(join(project, 'dist', part), join(app, 'dist', part), {
        recursive: true,
        // This machine's compile cache is not the image's (its Node may differ): the image makes its own.
        filter: (src) => basename(src) !== '.compile-cache',
      });
  }
  cpSync(join(project, 'package.json'), join(app, 'package.json'));
  cpSync(join(project, 'native', 'binding.gyp'), join(app, 'native', 'binding.gyp'));
  const addon = join(project, 'native', 'build', 'Release', 'weft_native.node');
  if (existsSync(addon)) cpSync(addon, join(app, 'native', 'build', 'Release', 'weft_native.node'));
  else
    console.warn(
      "warning: the native addon is not built; the image's router will run without the sleeve and batched DNS",
    );
  // The CNI plugin binary and configs, which `weft setup-cni` installs on the host.
  const cni = join(project, 'native', 'build', 'weft-cni');
  if (existsSync(cni)) cpSync(cni, join(app, 'native', 'build', 'weft-cni'));
  else
    console.warn('warning: the CNI plugin binary is not built; weft setup-cni in the image installs the Node plugin');
  // The command helper: without it the router forks itself for every ip and nft it runs (slower).
  const helper = join(project, 'native', 'build', 'weft-exec');
  if (existsSync(helper)) cpSync(helper, join(app, 'native', 'build', 'weft-exec'));
  else console.warn("warning: the command helper is not built; the image's router starts its commands itself");
  cpSync(join(project, 'examples', 'cni'), join(app, 'examples', 'cni'), { recursive: true });
  const prod = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: project, encoding: 'utf8' })
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith(join(project, 'node_modules')));
  for (const dir of prod) {
    const rel = relative(project, dir);
    if (!existsSync(join(app, rel))) cpSync(dir, join(app, rel), { recursive: true, dereference: false });
  }
}

/** Imports a root filesystem into the engine as weft/router:VERSION. */
export async function importImage(api: DockerApi, root: string, tag = VERSION): Promise<void> {
  const tar = spawn('tar', ['-C', root, '--numeric-owner', '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await api.importImage(tar.stdout, ROUTER_IMAGE_REPO, tag, [
    `ENTRYPOINT ${JSON.stringify(ENTRYPOINT)}`,
    `ENV PATH=${PATH}`,
    ...Object.entries(ROUTER_ENV).map(([k, v]) => `ENV ${k}=${v}`),
    `LABEL weft.router=${VERSION}`,
  ]);
}

/** Builds and imports the image; returns its reference. */
export async function buildRouterImage(api: DockerApi, node?: string): Promise<string> {
  const root = buildRootfs(node);
  try {
    await importImage(api, root);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return ROUTER_IMAGE;
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const api = new DockerApi(defaultDockerApi());
  try {
    await api.ping();
    const started = Date.now();
    const at = process.argv.indexOf('--node');
    const node = at > 0 ? process.argv[at + 1] : process.env.WEFT_IMAGE_NODE;
    if (at > 0 && !node) throw new Error('--node needs the path of a node binary');
    if (node && !existsSync(node)) throw new Error(`no node binary at ${node}`);
    const ref = await buildRouterImage(api, node);
    console.log(`built ${ref} in ${((Date.now() - started) / 1000).toFixed(1)}s (engine ${api.address})`);
  } catch (err) {
    console.error(`weft image: ${(err as Error).message}`);
    process.exit(1);
  }
}
