#!/usr/bin/env node
// weft's CNI plugin where Node is installed (`npm install -g weft` gives it as
// `weft-cni`). Like the static binary `weft setup-cni` installs
// (native/weft-cni.c), it only hands the request to the local weft router
// (POST /cni; plugin/cni.ts does the work) and prints the answer. VERSION is
// answered here; with the router down, DEL removes the interface itself and
// succeeds, STATUS says "not available" (50), the rest "try again later" (11).
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { RouterUnreachable, callRouter } from './http.js';
import { CNI_VERSIONS, cniVersionOf } from '../plugin/cni-versions.js';

const DEFAULT_ROUTER = '127.0.0.1:6784';

function readStdin(): string {
  try {
    return readFileSync(0, 'utf8');
  } catch {
    return '';
  }
}

function configString(config: string, key: string): string | null {
  return new RegExp(`"${key}"\\s*:\\s*"([^"\\\\]{1,500})"`).exec(config)?.[1] ?? null;
}

async function main(): Promise<number> {
  const command = process.env.CNI_COMMAND ?? '';
  if (command === '' && process.stdin.isTTY) {
    process.stderr.write(
      "weft-cni: weft's CNI plugin, run by a container runtime (CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION,\nthe network configuration on stdin). It hands each request to the local weft router.\nInstall it with: weft setup-cni [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]\n",
    );
    return 1;
  }
  const config = readStdin();
  const version = cniVersionOf(config);
  const fail = (code: number, msg: string, details = ''): number => {
    process.stdout.write(JSON.stringify({ cniVersion: version, code, msg, details }) + '\n');
    return 1;
  };
  if (command === 'VERSION') {
    process.stdout.write(JSON.stringify({ cniVersion: version, supportedVersions: CNI_VERSIONS }) + '\n');
    return 0;
  }
  const router = configString(config, 'routerAddr') ?? DEFAULT_ROUTER;
  const env = (name: string) => process.env[name];
  const body = {
    command,
    ...(env('CNI_CONTAINERID') !== undefined ? { containerId: env('CNI_CONTAINERID') } : {}),
    ...(env('CNI_NETNS') !== undefined ? { netns: env('CNI_NETNS') } : {}),
    ...(env('CNI_IFNAME') !== undefined ? { ifname: env('CNI_IFNAME') } : {}),
    ...(env('CNI_ARGS') !== undefined ? { args: env('CNI_ARGS') } : {}),
    ...(env('CNI_PATH') !== undefined ? { path: env('CNI_PATH') } : {}),
    config,
  };
  let res: { status: number; text: string };
  try {
    res = await callRouter(router, 'POST', '/cni', body, 300_000);
  } catch (err) {
    if (!(err instanceof RouterUnreachable)) return fail(100, (err as Error).message);
    if (command === 'DEL') {
      // The router frees the address when it starts and finds the namespace gone.
      const netns = env('CNI_NETNS');
      const ifname = env('CNI_IFNAME');
      if (netns && ifname)
        try {
          execFileSync('nsenter', [`--net=${netns}`, 'ip', 'link', 'del', ifname], { stdio: 'ignore' });
        } catch {
          /* the namespace or the interface is gone already */
        }
      return 0;
    }
    return fail(command === 'STATUS' ? 50 : 11, `${err.message}; is it running?`);
  }
  if (res.status === 200 || res.status === 422) {
    if (res.text) process.stdout.write(res.text + '\n');
    return res.status === 200 ? 0 : 1;
  }
  return fail(100, `the weft router answered HTTP ${res.status} (is it older than this plugin?)`, res.text);
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stdout.write(JSON.stringify({ cniVersion: '1.1.0', code: 100, msg: err.message, details: '' }) + '\n');
    process.exit(1);
  },
);
