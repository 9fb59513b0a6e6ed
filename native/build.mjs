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
// Node's own headers, so node-gyp does not try to download them (there is no internet here).
const prefix = join(dirname(process.execPath), '..');
const env = { ...process.env };
if (!env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'common.gypi')))
  env.npm_config_nodedir = prefix;
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
