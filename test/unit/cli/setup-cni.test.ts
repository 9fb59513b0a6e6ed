// weft setup-cni into temporary directories: the plugin and a conflist that chains only what is there.
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { setupCni } from '../../../cli/setup-cni.js';
import { projectRoot } from '../../../lib/project-root.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'weft-setup-cni-'));
  dirs.push(d);
  return d;
}

const options = (binDir: string, confDir: string) => ({
  binDir,
  confDir,
  routerAddr: '127.0.0.1:6784',
  name: 'weft',
  dnsDomain: 'weft.local',
  chain: ['portmap', 'bandwidth'],
});

describe('weft setup-cni', () => {
  it('installs an executable plugin (the static binary when built) and a conflist chaining what the bin dir has', () => {
    const root = tmp();
    const bin = join(root, 'bin');
    const conf = join(root, 'net.d');
    setupCni(options(bin, conf)); // creates the directories
    writeFileSync(join(bin, 'portmap'), '');
    const r = setupCni(options(bin, conf));
    expect(r.kind).toBe(
      existsSync(join(projectRoot(), 'native', 'build', 'weft-cni')) ? 'static binary' : 'Node script',
    );
    expect(statSync(join(bin, 'weft-cni')).mode & 0o777).toBe(0o755);
    expect(r.chained).toEqual(['portmap']);
    expect(r.skipped).toEqual(['bandwidth']);
    const list = JSON.parse(readFileSync(join(conf, '10-weft.conflist'), 'utf8')) as {
      cniVersion: string;
      plugins: { type: string; routerAddr?: string }[];
    };
    expect(list.cniVersion).toBe('1.0.0');
    expect(list.plugins.map((p) => p.type)).toEqual(['weft-cni', 'portmap']);
    expect(list.plugins[0].routerAddr).toBe('127.0.0.1:6784');
  });

  it('refuses a plugin it cannot chain, before writing anything', () => {
    const root = tmp();
    expect(() => setupCni({ ...options(join(root, 'b'), join(root, 'c')), chain: ['flannel'] })).toThrow(
      /cannot chain "flannel"/,
    );
    expect(existsSync(join(root, 'b'))).toBe(false);
  });

  it("writes the pods' families into the config, and refuses ones that are no list of IPv4/IPv6 or do not fit the subnet", () => {
    const root = tmp();
    const conf = join(root, 'c');
    const r = setupCni({ ...options(join(root, 'b'), conf), ipFamilies: ['IPv6'] });
    const written = JSON.parse(readFileSync(r.conflist, 'utf8')) as { plugins: { ipFamilies?: string[] }[] };
    expect(written.plugins[0].ipFamilies).toEqual(['IPv6']);
    const other = tmp();
    for (const bad of [{ ipFamilies: ['ipv6'] }, { ipFamilies: ['IPv6'], subnet: '10.40.0.0/16' }])
      expect(() => setupCni({ ...options(join(other, 'b'), join(other, 'c')), ...bad })).toThrow(/--ip-families/);
    expect(existsSync(join(other, 'b'))).toBe(false);
  });
});
