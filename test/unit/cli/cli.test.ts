import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../../../lib/project-root.js';
import { silentLogger } from '../../../lib/logger.js';
import { Router } from '../../../router/router.js';
import { WEFT_CLI } from '../../harness/cluster.js';
import { run } from '../../harness/exec.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';

const dataDir = mkdtempSync(join(tmpdir(), 'weft-cli-'));
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));
const weft = (...args: string[]) =>
  run(process.execPath, [WEFT_CLI, ...args], { env: { ...process.env, WEFT_DATA_DIR: dataDir, WEFT_HTTP_ADDR: '' } });

describe('weft CLI without a router', () => {
  for (const args of [
    ['status'],
    ['status', 'peers'],
    ['connect', '198.18.0.1'],
    ['forget', '198.18.0.1'],
    ['report'],
    ['stop'],
    ['service', 'list'],
  ]) {
    it(`"weft ${args.join(' ')}" says no router runs, in one line, and fails`, async () => {
      const r = await weft(...args);
      expect(r.code).not.toBe(0);
      expect(r.stdout).toBe('');
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/no weft router is running/);
    });
  }

  it('names the unreachable API when told where it is', async () => {
    const r = await weft('status', '--http-addr', '127.0.0.1:9');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/does not answer/);
  });

  it('prints help for every command', async () => {
    for (const cmd of ['launch', 'connect', 'forget', 'status', 'report', 'stop', 'version']) {
      const r = await weft(cmd, '--help');
      expect(r.code, cmd).toBe(0);
      expect(r.stdout, cmd).toMatch(new RegExp(`Usage: weft ${cmd}`));
    }
    for (const cmd of [
      ['service', 'create'],
      ['service', 'list'],
      ['service', 'show'],
      ['service', 'remove'],
    ]) {
      const r = await weft(...cmd, '--help');
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.stdout, cmd.join(' ')).toMatch(new RegExp(`Usage: weft ${cmd.join(' ')}`));
    }
    const top = await weft('--help');
    expect(top.stdout).toMatch(/launch/);
    expect(top.stdout).toMatch(/service/);
  });

  it('launch --help lists the router options with their environment variables', async () => {
    const r = await weft('launch', '--help');
    expect(r.stdout).toMatch(/--password-file/);
    expect(r.stdout).toMatch(/env:\s+WEFT_DATA_DIR/);
    expect(r.stdout).toMatch(/--no-discovery/);
    expect(r.stdout).toMatch(/env:\s+WEFT_NO_DISCOVERY/);
  });

  it('rejects a bad option value before starting anything', async () => {
    const r = await weft('launch', '--port', '99999');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--port must be a whole number from 1 to 65535/);
  });

  it("the Kubernetes example's router arguments are options the router takes: dual-stack, NAT66", async () => {
    const { addRouterOptions, toRouterOptions } = await import('../../../router/options.js');
    const { Command } = await import('commander');
    const yaml = readFileSync(join(projectRoot(), 'examples', 'kubernetes', 'weft-daemonset.yaml'), 'utf8');
    const args = JSON.parse(/- name: router\n\s+image: \S+\n\s+args: (\[.*\])/.exec(yaml)![1]) as string[];
    const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-'));
    try {
      const peers = join(dir, 'peers');
      writeFileSync(peers, '192.0.2.11\n192.0.2.12\n');
      const cmd = addRouterOptions(new Command().exitOverride()).parse(
        args.map((a) => (a === '/etc/weft/peers' ? peers : a)),
        { from: 'user' },
      );
      const o = toRouterOptions(cmd.opts(), cmd.args);
      expect([o.ipv6, o.ipv6Nat, o.ipallocInit, o.peers]).toEqual([
        true,
        true,
        'consensus=3',
        ['192.0.2.11', '192.0.2.12'],
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--peers-file adds the peers it lists to those given; a missing file and a bad address are clear errors', async () => {
    const { toRouterOptions } = await import('../../../router/options.js');
    const dir = mkdtempSync(join(tmpdir(), 'weft-peers-'));
    try {
      const file = join(dir, 'peers');
      writeFileSync(file, '# the first nodes\n198.18.0.1 198.18.0.2\n198.18.0.3:6783, 198.18.0.1\n');
      expect(toRouterOptions({ peersFile: file }, ['198.18.0.9']).peers).toEqual([
        '198.18.0.9',
        '198.18.0.1',
        '198.18.0.2',
        '198.18.0.3:6783',
      ]);
      expect(() => toRouterOptions({ peersFile: join(dir, 'none') }, [])).toThrow(/cannot read the peers file/);
      // A peer the mesh could not dial is refused before the router starts, given or listed.
      expect(() => toRouterOptions({}, ['198.18.0.1', 'a b'])).toThrow('invalid peer address "a b"');
      writeFileSync(file, '198.18.0.1\n198.18.0.2:0\n');
      expect(() => toRouterOptions({ peersFile: file }, [])).toThrow(/198\.18\.0\.2:0/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('version works without a router', async () => {
    const r = await weft('version');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/weft CLI \d+\.\d+\.\d+/);
    expect(r.stdout).toMatch(/not running/);
  });
});

describe('weft status against a router', () => {
  /** Runs the CLI recording what it imports; its result and the module URLs it loaded. */
  async function weftRecorded(...args: string[]) {
    const record = join(dataDir, `imports-${Math.random().toString(36).slice(2)}`);
    const r = await run(
      process.execPath,
      ['--import', join(projectRoot(), 'test', 'harness', 'record-imports.mjs'), WEFT_CLI, ...args],
      { env: { ...process.env, WEFT_DATA_DIR: dataDir, WEFT_RECORD_IMPORTS: record } },
    );
    return { ...r, imports: [...new Set(readFileSync(record, 'utf8').trim().split('\n'))] };
  }

  it("prints the router's status without loading the daemon (fastify, lmdb, the addon); plain status, attach and detach not even commander", async () => {
    const port = await freePorts(2);
    const dir = mkdtempSync(join(tmpdir(), 'weft-cli-router-'));
    const router = await Router.start(routerOptions({ dataDir: dir, port, nickname: 'clihost' }), silentLogger);
    try {
      const api = `127.0.0.1:${port + 1}`;
      const served = await (await fetch(`http://${api}/status`)).text();
      const plain = await weftRecorded('status', '--http-addr', api);
      expect(plain.code, plain.stderr).toBe(0);
      expect(plain.stdout).toBe(served);
      expect(plain.stdout).toMatch(/Name: .*\(clihost\)/);
      const daemon = /node_modules\/(fastify|lmdb|pino|prom-client)\/|\/native\/|\/router\/(router|api|main)/;
      expect(plain.imports.filter((u) => daemon.test(u))).toEqual([]);
      expect(plain.imports.filter((u) => u.includes('node_modules/commander'))).toEqual([]);
      // The short way is in the bundled entry itself: nothing of weft but that one file is loaded.
      expect(plain.imports.filter((u) => u.includes('/dist/'))).toEqual([pathToFileURL(WEFT_CLI).href]);
      // The same code as tsc wrote it (ES modules, unbundled) says the same.
      const unbundled = await run(process.execPath, [
        WEFT_CLI.replace(/weft\.cjs$/, 'weft.js'),
        'status',
        '--http-addr',
        api,
      ]);
      expect(unbundled.stdout).toBe(served);

      // attach and detach of one container go the short way too, and say what the router said.
      for (const cmd of ['attach', 'detach']) {
        const quick = await weftRecorded(cmd, 'netns:nothing-here', '--http-addr', api);
        expect(quick.code).not.toBe(0);
        expect(quick.stderr).toMatch(cmd === 'attach' ? /without a datapath/ : /not attached here|without a datapath/);
        expect(quick.imports.filter((u) => u.includes('node_modules/commander') || daemon.test(u))).toEqual([]);
      }

      // Anything else goes through commander: still none of the daemon.
      const json = await weftRecorded('status', '--json', '--http-addr', api);
      expect(json.code, json.stderr).toBe(0);
      expect((JSON.parse(json.stdout) as { nickname?: string; name: string }).name).toBe(router.mesh.name);
      expect(json.imports.filter((u) => daemon.test(u))).toEqual([]);
      expect(json.imports.some((u) => u.includes('node_modules/commander'))).toBe(true);
      expect(json.imports.some((u) => u.endsWith('/dist/cli/commands.js'))).toBe(true);
    } finally {
      await router.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
