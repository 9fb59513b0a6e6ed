// How the CLI finds and talks to the router it manages: through the data
// directory (router.json) or an explicit --http-addr.
import { readFileSync } from './builtins.js';
import { routerInfoPath, type RouterInfo } from '../router/contract.js';
import { RouterUnreachable, callRouter } from './http.js';

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** Ends the CLI after an error: one line, `weft: why`, and its exit code (1 unless a CliError says otherwise). */
export function exitWithError(err: unknown): never {
  console.error(`weft: ${(err as Error)?.message ?? String(err)}`);
  process.exit(err instanceof CliError ? err.exitCode : 1);
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** True when pid is a weft router (guards against a recycled pid). */
function isRouterProcess(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('router/main.js');
  } catch {
    return false;
  }
}

/** The running router's info, or null when none runs for this data dir. */
export function readRouterInfo(dataDir: string): RouterInfo | null {
  let info: RouterInfo;
  try {
    info = JSON.parse(readFileSync(routerInfoPath(dataDir), 'utf8')) as RouterInfo;
  } catch {
    return null;
  }
  if (typeof info.pid !== 'number' || !isAlive(info.pid) || !isRouterProcess(info.pid)) return null;
  return info;
}

export interface Target {
  dataDir: string;
  httpAddr?: string;
}

function apiAddress(t: Target): string {
  if (t.httpAddr) return t.httpAddr;
  const info = readRouterInfo(t.dataDir);
  if (!info) throw new CliError(`no weft router is running (data dir ${t.dataDir}); start one with: weft launch`);
  return info.httpAddr;
}

export interface ApiResponse {
  status: number;
  body: string;
}

/**
 * How long the CLI waits for an answer. Requests that may wait for IPAM are bounded by the router
 * (--ipalloc-timeout, or the request's own timeout) and answer with the reason, so only a router
 * that does not answer at all meets this.
 */
const REQUEST_TIMEOUT_MS = 10 * 60_000;

export async function request(t: Target, method: string, path: string, body?: unknown): Promise<ApiResponse> {
  const addr = apiAddress(t);
  let res: { status: number; text: string };
  try {
    res = await callRouter(
      addr,
      method,
      path,
      body,
      method === 'GET' && !path.startsWith('/ring') ? 30_000 : REQUEST_TIMEOUT_MS,
    );
  } catch (err) {
    if (err instanceof RouterUnreachable) throw new CliError(`${err.message}; is it running? (weft launch starts it)`);
    throw err;
  }
  const text = res.text;
  if (res.status >= 400) {
    let msg = text;
    try {
      msg = (JSON.parse(text) as { error?: string }).error ?? text;
    } catch {
      /* plain text */
    }
    throw new CliError(msg.trim(), res.status === 404 ? 4 : 1);
  }
  return { status: res.status, body: text };
}
