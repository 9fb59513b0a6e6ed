// The one way weft runs the tools that program the kernel: ip and bridge
// (iproute2: single commands, `-batch -` for many changes in one process,
// `-json` to read state back), nft, conntrack, ethtool, and nsenter to do any
// of it inside a container's network namespace. Runs in the router's own
// namespace unless told to enter another. A missing tool says which Debian
// package has it. Commands go through the command helper (net/exec-helper.ts,
// native/weft-exec.c) where it was built, so the router is not forked for each;
// WEFT_EXEC_HELPER=off starts them directly.
import { execFile, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { type HelperPool, HelperUnavailable, execHelper } from './exec-helper.js';

export class CommandError extends Error {
  constructor(
    message: string,
    /** The tool's exit code (null: it did not run, or was killed). */
    readonly exitCode: number | null = null,
    readonly stderr = '',
  ) {
    super(message);
  }
}

const PACKAGES: Record<string, string> = {
  nft: 'nftables',
  ethtool: 'ethtool',
  conntrack: 'conntrack',
  ip: 'iproute2',
  bridge: 'iproute2',
  nsenter: 'util-linux',
};

function notFound(cmd: string): CommandError {
  const pkg = PACKAGES[cmd];
  return new CommandError(`${cmd} not found${pkg ? `: install ${pkg} (Debian: apt-get install ${pkg})` : ''}`);
}

/** Runs a command; resolves with its output, rejects with a CommandError saying what failed and why. */
async function run(cmd: string, args: string[], input?: string, timeoutMs = 20_000): Promise<string> {
  return (await runBoth(cmd, args, input, timeoutMs)).stdout;
}

/** run(), with what the command wrote to stderr too (some tools report there: conntrack's counts). */
function runBoth(
  cmd: string,
  args: string[],
  input?: string,
  timeoutMs = 20_000,
): Promise<{ stdout: string; stderr: string }> {
  const helper = execHelper();
  if (!helper) return started(cmd, args, input, timeoutMs);
  // A helper that cannot run started nothing: the command is started directly instead.
  return viaHelper(helper, cmd, args, input, timeoutMs).catch((err: unknown) => {
    if (err instanceof HelperUnavailable) return started(cmd, args, input, timeoutMs);
    throw err;
  });
}

/** The tool a command line runs (nsenter's command, not nsenter), for messages. */
function toolOf(cmd: string, args: string[]): string {
  return cmd === 'nsenter' ? (args.find((a) => !a.startsWith('--')) ?? cmd) : cmd;
}

/** nsenter ran, but not the tool it was to run: that one is missing. */
function nsenterMissed(cmd: string, stderr: string): boolean {
  return cmd === 'nsenter' && /No such file or directory/.test(stderr) && /exec/.test(stderr);
}

async function viaHelper(
  helper: HelperPool,
  cmd: string,
  args: string[],
  input: string | undefined,
  timeoutMs: number,
): Promise<{ stdout: string; stderr: string }> {
  const r = await helper.run([cmd, ...args], input, timeoutMs);
  const [stdout, stderr] = [r.stdout.toString(), r.stderr.toString()];
  if (r.spawnErrno === 2 /* ENOENT */) throw notFound(cmd);
  if (r.code === 0) return { stdout, stderr };
  if (nsenterMissed(cmd, stderr)) throw notFound(toolOf(cmd, args));
  const why =
    r.spawnErrno !== null
      ? `could not start it (errno ${r.spawnErrno})`
      : r.overflow
        ? 'its output passed 64 MiB'
        : r.signal !== null
          ? `killed (signal ${r.signal})${r.signal === 9 ? `, perhaps after ${timeoutMs / 1000} s` : ''}`
          : `exit code ${r.code}`;
  throw new CommandError(`${toolOf(cmd, args)} ${args.join(' ')}: ${stderr.trim() || why}`, r.code, stderr);
}

/** A command started from this process (no helper). */
function started(
  cmd: string,
  args: string[],
  input: string | undefined,
  timeoutMs: number,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: unknown }) | null;
      const tool = toolOf(cmd, args);
      if (e?.code === 'ENOENT' || nsenterMissed(cmd, String(stderr)))
        reject(notFound(e?.code === 'ENOENT' ? cmd : tool));
      else if (e)
        reject(
          new CommandError(
            `${tool} ${args.join(' ')}: ${String(stderr).trim() || e.message}`,
            typeof e.code === 'number' ? e.code : null,
            String(stderr),
          ),
        );
      else resolve({ stdout: String(stdout), stderr: String(stderr) });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

const exec = run;

/**
 * A command's output line by line, for listings of any size (no buffer to overflow); resolves when it
 * ends (rejects if it fails or runs past `timeoutMs`).
 */
export function lines(cmd: string, args: string[], onLine: (line: string) => void, timeoutMs = 60_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    createInterface({ input: child.stdout }).on('line', onLine);
    child.stderr.on('data', (d: Buffer) => {
      if (err.length < 4096) err += String(d);
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(e.code === 'ENOENT' ? notFound(cmd) : e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else
        reject(
          new CommandError(
            `${cmd} ${args.join(' ')}: ${signal ? `killed (${signal}) after ${timeoutMs / 1000} s` : err.trim() || `exit code ${code}`}`,
            code,
            err,
          ),
        );
    });
  });
}

/** A command line run here, or inside the network namespace at `netnsPath` (through nsenter). */
export function inNamespace(cmd: string, args: string[], netnsPath?: string): [string, string[]] {
  return netnsPath ? ['nsenter', [`--net=${netnsPath}`, cmd, ...args]] : [cmd, args];
}

/** `ip ARGS` here, or inside the network namespace at `netnsPath`. */
export function ip(args: string[], netnsPath?: string): Promise<string> {
  return exec(...inNamespace('ip', args, netnsPath));
}

export async function ipJson<T>(args: string[], netnsPath?: string): Promise<T> {
  const out = await ip(['-json', ...args], netnsPath);
  return (out.trim() ? JSON.parse(out) : []) as T;
}

/** Many `ip` commands in one process; -force keeps going past a failed line (each failure is reported). */
export function ipBatch(lines: string[]): Promise<string> {
  return lines.length === 0 ? Promise.resolve('') : exec('ip', ['-force', '-batch', '-'], lines.join('\n') + '\n');
}

/** Many `ip` commands in one process inside a namespace (undefined: here), stopping at the first that fails. */
export function ipBatchIn(netnsPath: string | undefined, lines: string[]): Promise<string> {
  return lines.length === 0
    ? Promise.resolve('')
    : exec(...inNamespace('ip', ['-batch', '-'], netnsPath), lines.join('\n') + '\n');
}

/** configureIn's exit code when the interface that must be absent is there (nothing was changed). */
export const INTERFACE_PRESENT = 73;

/**
 * Configures a namespace in one process: sysctls written first (a failed one is skipped: an old
 * kernel may lack it), then `ip -batch` (stopping at the first line that fails). With `absent`, first
 * checks that the namespace has no interface of that name (/proc/net/dev is the reading process's
 * namespace's), and fails with exit code INTERFACE_PRESENT, changing nothing, if it has.
 */
export function configureIn(
  netnsPath: string,
  sysctls: [string, string][],
  ipLines: string[],
  absent?: string,
): Promise<string> {
  for (const [path, value] of sysctls)
    if (!/^[\w./-]+$/.test(path) || !/^\w+$/.test(value))
      throw new CommandError(`sysctl ${path}=${value}: not a sysctl`);
  const writes = sysctls.map(([path, value]) => `echo ${value} > /proc/sys/${path} 2>/dev/null;`).join(' ');
  // The name is the script's $1, never part of its text. `read` strips the leading blanks of "  eth0: ...".
  const guard = absent
    ? `while read -r l; do case "$l" in "$1:"*) exit ${INTERFACE_PRESENT};; esac; done < /proc/net/dev;`
    : '';
  return exec(
    ...inNamespace('sh', ['-c', `${guard} ${writes} exec ip -batch -`, 'sh', ...(absent ? [absent] : [])], netnsPath),
    ipLines.length > 0 ? ipLines.join('\n') + '\n' : '',
  );
}

/** `nft ARGS` (with `-f -`, the ruleset on standard input), here or inside the namespace at `netnsPath`. */
export function nft(args: string[], input?: string, netnsPath?: string): Promise<string> {
  return exec(...inNamespace('nft', args, netnsPath), input);
}

/** `ethtool ARGS` (offload settings). */
export function ethtool(args: string[]): Promise<string> {
  return exec('ethtool', args);
}

export function bridgeBatch(lines: string[]): Promise<string> {
  return lines.length === 0 ? Promise.resolve('') : exec('bridge', ['-force', '-batch', '-'], lines.join('\n') + '\n');
}

export async function bridgeJson<T>(args: string[]): Promise<T> {
  const out = await exec('bridge', ['-json', ...args]);
  return (out.trim() ? JSON.parse(out) : []) as T;
}

export async function linkExists(name: string, netnsPath?: string): Promise<boolean> {
  try {
    await ip(['link', 'show', 'dev', name], netnsPath);
    return true;
  } catch {
    return false;
  }
}

/** Sets a sysctl (net.ipv4.ip_forward ...) here, or inside the namespace at `netnsPath` (/proc/sys is per namespace). */
export async function sysctl(path: string, value: string, netnsPath?: string): Promise<void> {
  // "net.ipv4.ip_forward", or a path with slashes where a part has dots (an interface name).
  const file = `/proc/sys/${path.includes('/') ? path : path.replaceAll('.', '/')}`;
  if (!netnsPath) return writeFile(file, value);
  if (!/^[\w./-]+$/.test(path) || !/^\w+$/.test(value)) throw new CommandError(`sysctl ${path}=${value}: not a sysctl`);
  await exec(...inNamespace('sh', ['-c', `echo ${value} > ${file}`], netnsPath));
}

/** `conntrack ARGS` here, or inside the namespace at `netnsPath` (it reports counts on stderr). */
export function conntrack(args: string[], netnsPath?: string): Promise<{ stdout: string; stderr: string }> {
  return runBoth(...inNamespace('conntrack', args, netnsPath), undefined, 10_000);
}
