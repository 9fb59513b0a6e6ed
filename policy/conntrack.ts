// The kernel's connection tracking, through Debian's `conntrack` tool: the flows
// it knows, and deleting those a policy change no longer allows (their next
// packet is then judged again as new, and dropped), so revoked means revoked.
import { execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Flow } from './model.js';
import { inNamespace } from '../datapath/iproute.js';

/** `conntrack ARGS` here, or inside the network namespace at `netnsPath`. */
export function conntrack(args: string[], netnsPath?: string): Promise<{ code: number; out: string; err: string }> {
  const [cmd, argv] = inNamespace('conntrack', args, netnsPath);
  return new Promise((resolve, reject) => {
    execFile(cmd, argv, { timeout: 10_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if ((err as NodeJS.ErrnoException | null)?.code === 'ENOENT' || /conntrack.*No such file/.test(String(stderr))) reject(new Error('conntrack not found: install it (Debian: apt-get install conntrack): weft cuts flows a revoked rule or a gone backend no longer allows'));
      else resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, out: String(stdout), err: String(stderr) });
    });
  });
}

/** One line of `conntrack -L`, by its original direction. */
export function parseConntrackLine(line: string): Flow | null {
  const proto = /^(\S+)\s/.exec(line.trim())?.[1];
  const field = (k: string) => new RegExp(`\\b${k}=(\\S+)`).exec(line)?.[1];
  const src = field('src');
  const dst = field('dst');
  if (!proto || !src || !dst) return null;
  const dport = field('dport');
  return { proto, src, dst, ...(dport !== undefined && (proto === 'tcp' || proto === 'udp') ? { port: Number(dport) } : {}) };
}

/**
 * The tracked flows that `keep` selects, read as `conntrack -L` prints them, line by line: a host with
 * millions of flows costs time, not memory (there is no limit on the listing's size to overflow).
 */
export function listFlows(keep: (f: Flow) => boolean, netnsPath?: string): Promise<Flow[]> {
  const [cmd, argv] = inNamespace('conntrack', ['-L', '-f', 'ipv4'], netnsPath);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Flow[] = [];
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      const f = parseConntrackLine(line);
      if (f && keep(f)) out.push(f);
    });
    child.stderr.on('data', (d: Buffer) => {
      if (err.length < 4096) err += String(d);
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(e.code === 'ENOENT' ? new Error('conntrack not found: install it (Debian: apt-get install conntrack): weft cuts flows a revoked rule or a gone backend no longer allows') : e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`conntrack -L: ${signal ? `killed (${signal}) after 60 s` : err.trim() || `exit code ${code}`}`));
    });
  });
}

/** Deletes the tracked flows of this 5-tuple (any source port). */
export async function deleteFlow(f: Flow): Promise<void> {
  const args = ['-D', '-f', 'ipv4', '-p', f.proto, '-s', f.src, '-d', f.dst];
  if (f.port !== undefined) args.push('--dport', String(f.port));
  await conntrack(args); // "0 flow entries" (already gone) is fine
}
