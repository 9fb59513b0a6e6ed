// The npm package as a user gets it: `npm pack` of this checkout, installed with `npm install -g`
// into a temporary prefix (the registry supplies the dependencies; the addon and the CNI plugin
// binary are built at install). The commands must work from the installed copy alone.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../../../lib/project-root.js';

const root = projectRoot();
const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
let work = '';
let prefix = '';
let packed: string[] = [];

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'weft-pack-'));
  prefix = join(work, 'prefix');
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', work], {
    cwd: root,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const info = JSON.parse(out.slice(out.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  packed = info[0].files.map((f) => f.path);
  execFileSync('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', join(work, info[0].filename)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}, 600_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

const bin = (name: string) => join(prefix, 'bin', name);

describe('npm pack + npm install -g', () => {
  it('packs the compiled CLI, router and plugin sources, and no tests', () => {
    expect(packed).toContain('dist/cli/weft.cjs'); // the bundled entry (cli/bundle.ts)
    expect(packed).toContain('dist/cli/commands.js');
    expect(packed).toContain('dist/router/main.js');
    expect(packed.filter((p) => p.startsWith('dist/cli/bundle.js'))).toEqual([]); // a build step, not shipped
    expect(packed).toContain('native/weft-cni.c');
    expect(packed).toContain('examples/cni/10-weft.conflist');
    expect(packed.filter((p) => p.startsWith('dist/test/') || p.startsWith('test/'))).toEqual([]);
  });

  it('gives working weft commands: --version is the package version, --help lists setup-cni', () => {
    expect(execFileSync(bin('weft'), ['--version'], { encoding: 'utf8' }).trim()).toBe(version);
    const help = execFileSync(bin('weft'), ['--help'], { encoding: 'utf8' });
    expect(help).toMatch(/setup-cni/);
    expect(help).toMatch(/launch/);
  });

  it('weft-cni (Node) and the static plugin built at install answer VERSION', () => {
    const ask = (cmd: string) =>
      spawnSync(cmd, [], {
        input: '{"cniVersion":"1.0.0"}',
        env: { PATH: process.env.PATH, CNI_COMMAND: 'VERSION' },
        encoding: 'utf8',
      });
    const node = ask(bin('weft-cni'));
    expect(node.status, node.stderr).toBe(0);
    expect(JSON.parse(node.stdout)).toMatchObject({
      cniVersion: '1.0.0',
      supportedVersions: expect.arrayContaining(['1.1.0']),
    });
    const installed = join(prefix, 'lib', 'node_modules', 'weft', 'native', 'build', 'weft-cni');
    expect(existsSync(installed), 'the CNI plugin binary was not built at install (a C compiler is needed)').toBe(true);
    expect(JSON.parse(ask(installed).stdout)).toEqual(JSON.parse(node.stdout));
  });
});
