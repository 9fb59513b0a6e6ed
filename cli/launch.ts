// `weft launch`: starts the router as a background process (a Docker container
// comes with the Docker issue) and returns once its API answers.
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { toRouterOptions } from '../router/options.js';
import { CliError, readRouterInfo } from './client.js';

export const routerMain = fileURLToPath(new URL('../router/main.js', import.meta.url));

function tail(path: string, lines: number): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** The router arguments the user gave on the command line (the password travels in the environment instead). */
function routerArgs(cmd: Command): string[] {
  const v = cmd.opts();
  const args: string[] = [];
  for (const opt of cmd.options) {
    const key = opt.attributeName();
    if (cmd.getOptionValueSource(key) !== 'cli' || ['password', 'wait', 'docker'].includes(key)) continue;
    if (opt.negate) {
      if (v[key] === false) args.push(opt.long!);
      continue;
    }
    const value = v[key];
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
  if (running) throw new CliError(`a weft router is already running (pid ${running.pid}, data dir ${opts.dataDir}); stop it with: weft stop`);
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const logPath = join(opts.dataDir, 'weft.log');
  const fd = openSync(logPath, 'a');
  const env = { ...process.env };
  if (cmd.getOptionValueSource('password') === 'cli') env.WEFT_PASSWORD = v.password as string;
  const child = spawn(process.execPath, [routerMain, ...routerArgs(cmd), ...peers], {
    detached: true,
    stdio: ['ignore', fd, fd],
    env,
  });
  closeSync(fd);
  let exited: number | null = null;
  child.on('exit', (code) => (exited = code ?? 1));
  const deadline = Date.now() + (v.wait as number) * 1000;
  let announced = false;
  for (;;) {
    if (exited !== null) {
      throw new CliError(`the weft router exited during start-up (code ${exited}). Last lines of ${logPath}:\n${tail(logPath, 10)}`);
    }
    const info = readRouterInfo(opts.dataDir);
    if (info && info.pid === child.pid) {
      try {
        const res = await fetch(`http://${info.httpAddr}/status`, { signal: AbortSignal.timeout(2000) });
        if (res.ok) {
          child.unref();
          console.log(`weft router started: ${info.name}(${info.nickname}), pid ${info.pid}, API on ${info.httpAddr}`);
          console.log(`log: ${logPath}`);
          return;
        }
      } catch {
        /* not answering yet */
      }
    }
    if (Date.now() > deadline) {
      child.kill('SIGTERM');
      throw new CliError(`the weft router did not become ready within ${v.wait}s; see ${logPath}`);
    }
    if (!announced && Date.now() > deadline - (v.wait as number) * 1000 + 3000) {
      process.stderr.write('waiting for the weft router to answer...\n');
      announced = true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
