// The router as a Docker container: what `weft launch` runs when a Docker
// engine answers, and how `weft stop` / `weft reset` remove it.
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  DockerApi,
  DockerError,
  defaultDockerApi,
  dockerSocketPath,
  type ContainerInfo,
} from '../plugin/docker-api.js';
import { ROUTER_IMAGE } from '../plugin/image.js';
import { VERSION } from '../lib/version.js';
import type { RouterOptions } from '../router/options.js';
import { CliError } from './client.js';

export const ROUTER_CONTAINER = 'weft';

/** The engine at DOCKER_HOST (or /var/run/docker.sock), if one answers. */
export async function dockerEngine(): Promise<DockerApi | null> {
  const api = new DockerApi(defaultDockerApi());
  try {
    await api.ping();
    return api;
  } catch {
    return null;
  }
}

/** The router container, when an engine answers and has one. */
async function routerContainer(): Promise<{ api: DockerApi; container: ContainerInfo } | null> {
  const api = await dockerEngine();
  if (!api) return null;
  const container = await api.find(ROUTER_CONTAINER);
  return container ? { api, container } : null;
}

/**
 * The container spec: host network and pid namespaces (the router plumbs the host and enters
 * containers' namespaces), the capabilities that needs and no more (never --privileged), writable
 * /proc/sys for the sysctls it sets, the engine's socket, the data directory, the plugin directory.
 */
export function containerSpec(
  api: DockerApi,
  opts: RouterOptions,
  args: string[],
  passwordFile: string | undefined,
): Record<string, unknown> {
  const sock = dockerSocketPath(api.address);
  const binds = [`${opts.dataDir}:${opts.dataDir}`, '/run/netns:/run/netns:rslave'];
  if (sock) binds.push(`${sock}:/var/run/docker.sock`);
  if (opts.dockerPlugin) binds.push(`${dirname(opts.dockerPlugin)}:${dirname(opts.dockerPlugin)}`);
  // The OVS datapath talks to ovsdb-server and ovs-vswitchd through sockets in OVS's run directory.
  if (opts.datapath === 'ovs' && opts.ovsdb.startsWith('unix:'))
    binds.push(`${dirname(opts.ovsdb.slice(5))}:${dirname(opts.ovsdb.slice(5))}`);
  const env = [`WEFT_CONTAINER=${ROUTER_CONTAINER}`];
  const cmd = [...args, '--data-dir', opts.dataDir, '--docker-api', sock ? 'unix:///var/run/docker.sock' : api.address];
  if (passwordFile) {
    binds.push(`${passwordFile}:/run/weft-password:ro`);
    cmd.push('--password-file', '/run/weft-password');
  } else if (opts.password !== null) {
    env.push(`WEFT_PASSWORD=${opts.password}`); // visible to docker inspect: --password-file keeps it out
  }
  const securityOpt = ['seccomp=unconfined'];
  if (existsSync('/sys/module/apparmor/parameters/enabled')) securityOpt.push('apparmor=unconfined');
  return {
    Image: ROUTER_IMAGE,
    Cmd: [...cmd, ...opts.peers],
    Env: env,
    Labels: { 'weft.router': VERSION },
    HostConfig: {
      NetworkMode: 'host',
      PidMode: 'host',
      CapAdd: ['NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE'],
      SecurityOpt: securityOpt,
      // What `docker run --security-opt systempaths=unconfined` sends: /proc/sys writable for the sysctls.
      MaskedPaths: [],
      ReadonlyPaths: [],
      Binds: binds,
      Devices: existsSync('/dev/net/tun')
        ? [{ PathOnHost: '/dev/net/tun', PathInContainer: '/dev/net/tun', CgroupPermissions: 'rwm' }]
        : [],
      RestartPolicy: { Name: 'unless-stopped' },
    },
  };
}

/** Creates and starts the router container (a stopped one of the same name is replaced). */
export async function startRouterContainer(api: DockerApi, spec: Record<string, unknown>): Promise<string> {
  const old = await api.find(ROUTER_CONTAINER);
  if (old?.State.Running)
    throw new CliError(`a weft router container is already running (${ROUTER_CONTAINER}); stop it with: weft stop`);
  if (old) await api.remove(old.Id);
  if (!(await api.imageExists(ROUTER_IMAGE))) {
    throw new CliError(
      `the image ${ROUTER_IMAGE} is not in the Docker engine at ${api.address}: build it with "npm run image" (or run the router as a process: weft launch --no-docker)`,
    );
  }
  const id = await api.create(ROUTER_CONTAINER, spec);
  try {
    await api.start(id);
  } catch (err) {
    await api.remove(id).catch(() => undefined);
    throw new CliError(`Docker could not start the router container: ${(err as Error).message}`);
  }
  return id;
}

/** Stops and removes the router container; false if there was none. */
export async function removeRouterContainer(): Promise<boolean> {
  const found = await routerContainer();
  if (!found) return false;
  try {
    if (found.container.State.Running) await found.api.stop(found.container.Id, 10);
    await found.api.remove(found.container.Id);
  } catch (err) {
    if (!(err instanceof DockerError && err.status === 404)) throw err;
  }
  return true;
}
