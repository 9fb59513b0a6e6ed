// A real Docker engine per namespace host: dockerd inside the host's network
// namespace and a private mount namespace of its own (fresh sysfs with the
// cgroup tree bound back under it, a private /run/docker), with its own data
// root, exec root, socket and bridge address. Stopped by PID, with every
// container it ran removed first.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { DockerApi } from '../../plugin/docker-api.js';
import { importImage } from '../../plugin/image.js';
import { type Host, sleep } from './cluster.js';
import { run, type ExecResult } from './exec.js';
import { isAlive } from '../../cli/client.js';
import { tail } from '../../cli/launch.js';

export function dockerInstalled(): string | null {
  for (const p of ['/usr/sbin/dockerd', '/usr/bin/dockerd']) if (existsSync(p)) return null;
  return 'dockerd is not installed (Debian: apt-get install docker.io)';
}

export class DockerHost {
  readonly api: DockerApi;
  private constructor(
    readonly host: Host,
    readonly dir: string,
    readonly pid: number,
  ) {
    this.api = new DockerApi(`unix://${this.socket}`);
  }

  get socket(): string {
    return join(this.dir, 'docker.sock');
  }

  /** DOCKER_HOST for the docker CLI and weft on this host. */
  get dockerHost(): string {
    return `unix://${this.socket}`;
  }

  static async start(host: Host): Promise<DockerHost> {
    const dir = join(host.cluster.workDir, `docker${host.index}`);
    mkdirSync(join(dir, 'cg'), { recursive: true });
    mkdirSync('/run/docker', { recursive: true }); // the mount point of each engine's private tmpfs
    const script = [
      'set -e',
      `mount --rbind /sys/fs/cgroup ${dir}/cg`,
      'mount -t sysfs sysfs /sys',
      `mount --rbind ${dir}/cg /sys/fs/cgroup`,
      'mount -t tmpfs tmpfs /run/docker',
      `exec dockerd --data-root ${dir}/data --exec-root ${dir}/exec -H unix://${dir}/docker.sock --pidfile ${dir}/docker.pid ` +
        `--bip 172.31.${240 + host.index}.1/24 --shutdown-timeout 2 --log-level warn`,
    ].join('\n');
    const log = openSync(join(dir, 'dockerd.log'), 'a');
    // nsenter and unshare exec (no fork): the child's pid is dockerd's.
    const child = spawn(
      'nsenter',
      [`--net=/run/netns/${host.ns}`, 'unshare', '-m', '--propagation', 'slave', 'sh', '-c', script],
      { stdio: ['ignore', log, log], detached: true },
    );
    closeSync(log);
    child.unref();
    const d = new DockerHost(host, dir, child.pid!);
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await d.api.ping();
        break;
      } catch (err) {
        if (child.exitCode !== null || Date.now() > deadline) {
          await d.stop();
          throw new Error(
            `dockerd on ${host.nickname} did not start: ${(err as Error).message}\n${tail(join(dir, 'dockerd.log'), 10)}`,
          );
        }
        await sleep(200);
      }
    }
    host.env = { ...host.env, DOCKER_HOST: d.dockerHost };
    return d;
  }

  /** The docker CLI against this engine. */
  docker(args: string[], timeoutMs = 60_000): Promise<ExecResult> {
    return run('docker', args, { timeoutMs, env: { ...process.env, DOCKER_HOST: this.dockerHost } });
  }

  async mustDocker(args: string[], timeoutMs = 60_000): Promise<string> {
    const r = await this.docker(args, timeoutMs);
    if (r.code !== 0)
      throw new Error(
        `docker ${args.join(' ')} on ${this.host.nickname} failed: ${r.stderr.trim() || r.stdout.trim()}`,
      );
    return r.stdout.trim();
  }

  /** Imports a root filesystem (plugin/image buildRootfs) as the router image. */
  async loadImage(rootfs: string): Promise<void> {
    await importImage(this.api, rootfs);
  }

  /** Removes every container, stops dockerd by PID (SIGKILL after 20 s) and deletes its files. */
  async stop(): Promise<void> {
    try {
      const ids = (await this.docker(['ps', '-aq'], 20_000)).stdout.split('\n').filter(Boolean);
      if (ids.length > 0) await this.docker(['rm', '-f', ...ids], 60_000);
    } catch {
      /* the engine is not answering: stopping it still removes its containers */
    }
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
    for (let i = 0; i < 200 && isAlive(this.pid); i++) await sleep(100);
    if (isAlive(this.pid)) process.kill(this.pid, 'SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}
