// Traffic between container namespaces, with Node itself (no ping or nc needed):
// a TCP echo round trip and a UDP datagram.
import { spawn } from 'node:child_process';
import { run } from './exec.js';

const SERVER = `
const net = require('node:net'); const dgram = require('node:dgram');
const [port] = process.argv.slice(1).map(Number);
// Both families where the namespace has IPv6 (a dual-stack socket takes IPv4 too), else IPv4.
const start = (any, kind) => {
  const srv = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); });
  srv.once('error', () => (any === '::' ? start('0.0.0.0', 'udp4') : process.exit(1)));
  srv.listen(port, any, () => {
    const u = dgram.createSocket(kind);
    u.on('message', (m, r) => u.send(m, r.port, r.address));
    u.bind(port, any, () => process.stdout.write('ready\\n'));
  });
};
start('::', 'udp6');
setTimeout(() => process.exit(0), 60000);`;

const CLIENT = `
const net = require('node:net'); const dgram = require('node:dgram');
const [ip, port, proto, size, wait] = process.argv.slice(1);
const payload = Buffer.alloc(Number(size || 5), 'x'); payload.write('hello');
const fail = (e) => { process.stderr.write(String(e)); process.exit(1); };
setTimeout(() => fail('timed out'), Number(wait || 5000));
if (proto === 'udp') {
  const u = dgram.createSocket(ip.includes(':') ? 'udp6' : 'udp4');
  u.on('message', (m) => { process.stdout.write(String(m.length)); process.exit(0); });
  u.send(payload, Number(port), ip, (e) => e && fail(e));
} else {
  const chunks = []; let n = 0;
  const s = net.connect(Number(port), ip, () => s.write(payload));
  s.on('data', (d) => { chunks.push(d); n += d.length; if (n >= payload.length) { process.stdout.write(String(n)); process.exit(0); } });
  s.on('error', fail);
}`;

/** Starts an echo server (TCP and UDP on `port`) in a namespace; resolves once it listens. */
export function echoServer(ns: string, port: number): Promise<{ stop: () => void }> {
  return startServer(ns, SERVER, [String(port)], 'echo server');
}

const PUSH_SERVER = `
const [port] = process.argv.slice(1).map(Number);
const start = (any) => {
  const srv = require('node:net').createServer((s) => {
    s.on('error', () => {});
    const t = setInterval(() => s.write('.'), 100);
    s.on('close', () => clearInterval(t));
  });
  srv.once('error', () => (any === '::' ? start('0.0.0.0') : process.exit(1)));
  srv.listen(port, any, () => process.stdout.write('ready\\n'));
};
start('::');
setTimeout(() => process.exit(0), 120000);`;

/**
 * Starts a TCP server (both families) that sends a byte every 100 ms on each connection, unasked:
 * a connection whose server speaks first after a revocation.
 */
export function pushServer(ns: string, port: number): Promise<{ stop: () => void }> {
  return startServer(ns, PUSH_SERVER, [String(port)], 'push server');
}

/** Runs a Node script in a namespace that prints "ready" once it listens; resolves then. */
export async function startServer(
  ns: string,
  script: string,
  args: string[],
  what: string,
): Promise<{ stop: () => void }> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} in ${ns} did not start`)), 10_000);
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(t);
        resolve();
      }
    });
    child.on('exit', (code) => reject(new Error(`${what} in ${ns} exited (${code})`)));
  });
  return { stop: () => child.kill('SIGKILL') };
}

/** Sends `size` bytes from a namespace to ip:port and waits for the echo; returns the byte count echoed, or throws. */
export async function echo(
  ns: string,
  ip: string,
  port: number,
  proto: 'tcp' | 'udp' = 'tcp',
  size = 5,
  waitMs = 5000,
): Promise<number> {
  const r = await run(
    'ip',
    ['netns', 'exec', ns, process.execPath, '-e', CLIENT, ip, String(port), proto, String(size), String(waitMs)],
    { timeoutMs: waitMs + 5000 },
  );
  if (r.code !== 0) throw new Error(`${proto} echo from ${ns} to ${ip}:${port} failed: ${r.stderr.trim() || r.code}`);
  return Number(r.stdout);
}
