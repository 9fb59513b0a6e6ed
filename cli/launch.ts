// `weft launch`: starts the router as a Docker container when an engine answers
// (else, or with --no-docker, as a background process) and returns once its
// API answers.
import { callRouter } from './http.js';
import { spawn } from 'node:child_process';
import { type FSWatcher, closeSync, mkdirSync, openSync, readFileSync, watch } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { toRouterOptions, type RouterOptions } from '../router/options.js';
import { ROUTER_INFO_FILE, type RouterInfo } from '../router/contract.js';
import { DockerApi, defaultDockerApi } from '../plugin/docker-api.js';
import { ROUTER_IMAGE } from '../plugin/image.js';
import { CliError, readRouterInfo } from './client.js';
import { ROUTER_CONTAINER, containerSpec, dockerEngine, startRouterContainer } from './router-container.js';
import { routerEnv } from '../lib/router-env.js';

const routerMain = fileURLToPath(new URL('../router/main.js', import.meta.url));

/** The last lines of a file, or nothing when it cannot be read. */
export function tail(path: string, lines: number): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** The router arguments the user gave on the command line, but `skip` (the password travels in the environment instead). */
function routerArgs(cmd: Command, skip: string[] = []): string[] {
  const v = cmd.opts();
  const args: string[] = [];
  for (const opt of cmd.options) {
    const key = opt.attributeName();
    if (cmd.getOptionValueSource(key) !== 'cli' || ['password', 'wait', 'docker', ...skip].includes(key)) continue;
    if (opt.negate) {
      if (v[key] === false) args.push(opt.long!);
      continue;
    }
    const value = v[key];
    if (value === true) {
      args.push(opt.long!); // a switch (--ipv6): no value
      continue;
    }
    // Durations were parsed to milliseconds: pass them on with their unit (a bare number means seconds).
    if (typeof value === 'number' && /interval|timeout/i.test(key)) args.push(opt.long!, `${value}ms`);
    else args.push(opt.long!, String(value));
  }
  return args;
}

export async function launch(cmd: Command, peers: string[]): Promise<void> {
  const v = cmd.opts();
  const opts = toRouterOptions(v, peers); // validates (and reads the password file) before anything starts
  const running = readRouterInfo(opts.dataDir);
  if (running)
    throw new CliError(
      `a weft router is already running (pid ${running.pid}${running.container ? `, container ${running.container}` : ''}, data dir ${opts.dataDir}); stop it with: weft stop`,
    );
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  if (v.docker !== false) {
    const api = await dockerEngine();
    if (api) return launchContainer(cmd, api, opts);
    process.stderr.write(`no Docker engine answers at ${defaultDockerApi()}: starting the router as a process\n`);
  }
  const logPath = join(opts.dataDir, 'weft.log');
  const fd = openSync(logPath, 'a');
  const env = routerEnv(process.env);
  if (cmd.getOptionValueSource('password') === 'cli') env.WEFT_PASSWORD = v.password as string;
  const child = spawn(process.execPath, [routerMain, ...routerArgs(cmd), ...peers], {
    detached: true,
    stdio: ['ignore', fd, fd],
    env,
  });
  closeSync(fd);
  let exited: number | null = null;
  child.on('exit', (code) => (exited = code ?? 1));
  await waitReady(opts.dataDir, v.wait as number, {
    isMine: (info) => info.pid === child.pid,
    failed: async () =>
      exited === null
        ? null
        : `the weft router exited during start-up (code ${exited}). Last lines of ${logPath}:\n${tail(logPath, 10)}`,
    giveUp: async () => {
      child.kill('SIGTERM');
      return `see ${logPath}`;
    },
  });
  child.unref();
  const info = startedInfo(opts.dataDir, `see ${logPath}`);
  console.log(`weft router started: ${info.name}(${info.nickname}), pid ${info.pid}, API on ${info.httpAddr}`);
  console.log(`log: ${logPath}`);
}

async function launchContainer(cmd: Command, api: DockerApi, opts: RouterOptions): Promise<void> {
  const v = cmd.opts();
  // The container gets these its own way (containerSpec).
  const args = routerArgs(cmd, ['dataDir', 'dockerApi', 'passwordFile']);
  const passwordFile = cmd.getOptionValueSource('passwordFile') !== undefined ? (v.passwordFile as string) : undefined;
  const id = await startRouterContainer(api, containerSpec(api, opts, args, passwordFile));
  process.stderr.write(
    `started container ${ROUTER_CONTAINER} (${id.slice(0, 12)}) from ${ROUTER_IMAGE}; waiting for the router to answer...\n`,
  );
  await waitReady(opts.dataDir, v.wait as number, {
    isMine: (info) => info.container === ROUTER_CONTAINER,
    failed: async () => {
      const c = await api.find(id);
      // Its restart policy brings a crashing router back at once: a restart counts as a failure too.
      if (c?.State.Running && !c.RestartCount) return null;
      if (c) await api.stop(id, 2).catch(() => undefined);
      const logs = await api.logs(id, 10).catch(() => '');
      return `the weft router container exited during start-up (${c ? `code ${c.State.ExitCode}${c.RestartCount ? `, restarted ${c.RestartCount} time(s)` : ''}` : 'removed'}). Last lines of docker logs ${ROUTER_CONTAINER}:\n${logs.trimEnd()}`;
    },
    giveUp: async () => {
      await api.stop(id, 5).catch(() => undefined);
      return `see: docker logs ${ROUTER_CONTAINER}`;
    },
  });
  const info = startedInfo(opts.dataDir, `see: docker logs ${ROUTER_CONTAINER}`);
  console.log(
    `weft router started: ${info.name}(${info.nickname}), container ${ROUTER_CONTAINER} (pid ${info.pid}), API on ${info.httpAddr}`,
  );
  console.log(`log: docker logs ${ROUTER_CONTAINER}`);
}

/** The started router's router.json; gone only if it stopped again at once. */
function startedInfo(dataDir: string, where: string): RouterInfo {
  const info = readRouterInfo(dataDir);
  if (!info) throw new CliError(`the weft router answered and then stopped at once; ${where}`);
  return info;
}

/** Waits until the router writes its router.json and answers /status; says so after 3 s. */
async function waitReady(
  dataDir: string,
  seconds: number,
  how: { isMine: (info: RouterInfo) => boolean; failed: () => Promise<string | null>; giveUp: () => Promise<string> },
): Promise<void> {
  const started = Date.now();
  const deadline = started + seconds * 1000;
  let announced = false;
  // The router renames its router.json into the data dir when it answers: a watch wakes the loop
  // then, not up to a look later (the looks go on, for file systems that cannot be watched).
  let wake: (() => void) | null = null;
  let woken = false; // while the loop looks: it looks again at once
  let watcher: FSWatcher | null = null;
  try {
    watcher = watch(dataDir, (_event, name) => {
      if (name !== ROUTER_INFO_FILE) return;
      woken = true;
      wake?.();
    });
    watcher.on('error', () => undefined);
  } catch {
    // looks alone
  }
  try {
    for (;;) {
      const why = await how.failed();
      if (why) throw new CliError(why);
      const info = readRouterInfo(dataDir);
      if (info && how.isMine(info)) {
        try {
          const res = await callRouter(info.httpAddr, 'GET', '/status', undefined, 2000);
          if (res.status === 200) return;
        } catch {
          /* not answering yet */
        }
      }
      if (Date.now() > deadline)
        throw new CliError(`the weft router did not become ready within ${seconds}s; ${await how.giveUp()}`);
      if (!announced && Date.now() > started + 3000) {
        process.stderr.write('waiting for the weft router to answer...\n');
        announced = true;
      }
      // Often: the router's start takes well under a second, and each look is a file read.
      if (!woken)
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 25);
        });
      wake = null;
      woken = false;
    }
  } finally {
    watcher?.close();
  }
}
