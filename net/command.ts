// iproute2 as the way to program the kernel: single commands, `-batch -` for
// many changes in one process, `-json` to read state back. Runs in the
// router's own network namespace unless told to enter another.
import { execFile } from 'node:child_process';

export class CommandError extends Error {}

function exec(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 20_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if ((err as NodeJS.ErrnoException | null)?.code === 'ENOENT') {
        const pkg: Record<string, string> = { nft: 'nftables', ethtool: 'ethtool' };
        reject(new CommandError(`${cmd} not found${pkg[cmd] ? `: install ${pkg[cmd]} (Debian: apt-get install ${pkg[cmd]})` : ''}`));
      } else if (err) reject(new CommandError(`${cmd} ${args.join(' ')}: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
    if (input !== undefined) child.stdin?.end(input);
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

/** Many `ip` commands in one process inside a namespace, stopping at the first that fails. */
export function ipBatchIn(netnsPath: string, lines: string[]): Promise<string> {
  return lines.length === 0 ? Promise.resolve('') : exec(...inNamespace('ip', ['-batch', '-'], netnsPath), lines.join('\n') + '\n');
}

/** `bridge ARGS`. */
export function bridge(args: string[]): Promise<string> {
  return exec('bridge', args);
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

export async function sysctl(path: string, value: string): Promise<void> {
  const { writeFile } = await import('node:fs/promises');
  await writeFile(`/proc/sys/${path.replaceAll('.', '/')}`, value);
}
