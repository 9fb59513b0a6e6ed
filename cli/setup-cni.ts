// `weft setup-cni`: puts weft's CNI plugin and a network config where a container
// runtime looks (kubelet's runtime, podman, containerd). The plugin is the static
// binary native/build/weft-cni when it was built (it runs on a host with no Node:
// the Kubernetes init step copies it out of the router image); else a small
// script that runs this installation's Node plugin. The config list chains the
// reference `portmap` and `bandwidth` plugins when the bin directory has them.
// Files are written whole and renamed into place, so a runtime never reads half.
import { chmodSync, copyFileSync, existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../lib/project-root.js';
import { isIpFamilies, subnetFamilyProblem } from '../net/validate.js';

export interface SetupCniOptions {
  binDir: string;
  confDir: string;
  /** The router's API as the plugin reaches it (HOST:PORT or unix:/PATH). */
  routerAddr: string;
  /** Reference plugins to chain after weft's, when present in binDir. */
  chain: string[];
  /** The network's name in the runtime. */
  name: string;
  /** Allocate from this subnet of weft's range (default: the router's default subnet). */
  subnet?: string;
  dnsDomain: string;
  /** The pods' families (the config's ipFamilies): ["IPv4"], ["IPv6"] or both; none: each family the router carries. */
  ipFamilies?: string[];
}

export interface SetupCniResult {
  plugin: string;
  kind: 'static binary' | 'Node script';
  conflist: string;
  chained: string[];
  skipped: string[];
}

/** What each chained plugin needs from the runtime (podman and Kubernetes fill these in). */
const CHAINED: Record<string, Record<string, unknown>> = {
  portmap: { type: 'portmap', capabilities: { portMappings: true }, snat: true },
  bandwidth: { type: 'bandwidth', capabilities: { bandwidth: true } },
};

/** The conflist text; cniVersion 1.0.0, which every current runtime and reference plugin speaks. */
function conflist(
  o: Pick<SetupCniOptions, 'name' | 'routerAddr' | 'subnet' | 'dnsDomain' | 'ipFamilies'>,
  chained: string[],
) {
  return (
    JSON.stringify(
      {
        cniVersion: '1.0.0',
        name: o.name,
        plugins: [
          {
            type: 'weft-cni',
            routerAddr: o.routerAddr,
            dnsDomain: o.dnsDomain,
            ...(o.subnet ? { subnet: o.subnet } : {}),
            ...(o.ipFamilies ? { ipFamilies: o.ipFamilies } : {}),
          },
          ...chained.map((c) => CHAINED[c]),
        ],
      },
      null,
      2,
    ) + '\n'
  );
}

function writeAtomically(path: string, write: (tmp: string) => void, mode: number): void {
  const tmp = `${path}.weft-tmp-${process.pid}`;
  write(tmp);
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

export function setupCni(o: SetupCniOptions): SetupCniResult {
  const families = o.ipFamilies;
  if (families && !isIpFamilies(families))
    throw new Error(`--ip-families ${families.join(',')}: give IPv4, IPv6 or IPv4,IPv6`);
  const mismatch = subnetFamilyProblem(o.subnet, families as ('IPv4' | 'IPv6')[] | undefined);
  if (mismatch) throw new Error(`--subnet and --ip-families: ${mismatch}`);
  for (const c of o.chain)
    if (!CHAINED[c]) throw new Error(`cannot chain "${c}": weft knows how to chain ${Object.keys(CHAINED).join(', ')}`);
  mkdirSync(o.binDir, { recursive: true });
  mkdirSync(o.confDir, { recursive: true });
  const root = projectRoot();
  const binary = join(root, 'native', 'build', 'weft-cni');
  const plugin = join(o.binDir, 'weft-cni');
  let kind: SetupCniResult['kind'];
  if (existsSync(binary)) {
    writeAtomically(plugin, (tmp) => copyFileSync(binary, tmp), 0o755);
    kind = 'static binary';
  } else {
    const script = `#!/bin/sh\n# weft's CNI plugin (Node): written by weft setup-cni\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(join(root, 'dist', 'cli', 'weft-cni.js'))}\n`;
    writeAtomically(plugin, (tmp) => writeFileSync(tmp, script), 0o755);
    kind = 'Node script';
  }
  const chained = o.chain.filter((c) => existsSync(join(o.binDir, c)));
  const skipped = o.chain.filter((c) => !chained.includes(c));
  const conf = join(o.confDir, `10-${o.name}.conflist`);
  writeAtomically(conf, (tmp) => writeFileSync(tmp, conflist(o, chained)), 0o644);
  return { plugin, kind, conflist: conf, chained, skipped };
}
