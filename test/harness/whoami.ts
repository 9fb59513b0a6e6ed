// Traffic for services: a server that answers every message with its own name
// (so a client knows which backend it reached), and a client that opens many
// connections to an address, sends twice on each, and counts which backend
// answered, whether a connection ever changed backend, and how it failed.
import { run } from './exec.js';
import { startServer } from './traffic.js';

const SERVER = `
const net = require('node:net');
const [id, ...ports] = process.argv.slice(1);
let up = 0;
for (const p of ports) net.createServer((s) => { s.on('data', () => s.write(id + '\\n')); s.on('error', () => {}); })
  .listen(Number(p), '0.0.0.0', () => { if (++up === ports.length) process.stdout.write('ready\\n'); });
setTimeout(() => process.exit(0), 120000);`;

const CLIENT = `
const net = require('node:net');
const [ip, portList, count, waitMs] = process.argv.slice(1);
const ports = portList.split(',').map(Number);
const out = { counts: {}, mixed: 0, failed: 0, errors: {}, ms: [] };
function one(port) {
  return new Promise((resolve) => {
    const t0 = Date.now(); const seen = []; let buf = '';
    const s = net.connect(port, ip, () => s.write('a'));
    const timer = setTimeout(() => end('timeout'), Number(waitMs));
    function end(err) {
      clearTimeout(timer); s.destroy();
      if (err) { out.failed++; out.errors[err] = (out.errors[err] || 0) + 1; }
      else { out.counts[seen[0]] = (out.counts[seen[0]] || 0) + 1; if (seen[1] !== seen[0]) out.mixed++; }
      out.ms.push(Date.now() - t0); resolve();
    }
    s.on('data', (d) => {
      buf += d; let i;
      while ((i = buf.indexOf('\\n')) >= 0) { seen.push(buf.slice(0, i)); buf = buf.slice(i + 1); }
      if (seen.length === 1 && !s.sentTwice) { s.sentTwice = true; s.write('b'); }
      if (seen.length >= 2) end(null);
    });
    s.on('error', (e) => end(e.code || String(e)));
  });
}
(async () => { for (let i = 0; i < Number(count); i++) await one(ports[i % ports.length]);
  process.stdout.write(JSON.stringify(out)); process.exit(0); })();`;

/** Starts a server in a namespace that answers on every port with `id`; resolves once it listens. */
export function whoamiServer(ns: string, id: string, ports: number[]): Promise<{ stop: () => void }> {
  return startServer(ns, SERVER, [id, ...ports.map(String)], 'whoami server');
}

export interface Spread {
  /** Connections answered, per backend name. */
  counts: Record<string, number>;
  /** Connections whose two answers came from different backends. */
  mixed: number;
  failed: number;
  /** Failures by error code (ECONNREFUSED, timeout ...). */
  errors: Record<string, number>;
  /** Each connection's time to its end, in ms. */
  ms: number[];
}

/** Opens `count` connections one after another from a namespace to ip, on the ports in turn. */
export async function spread(ns: string, ip: string, ports: number[], count: number, waitMs = 3000): Promise<Spread> {
  const r = await run(
    'ip',
    ['netns', 'exec', ns, process.execPath, '-e', CLIENT, ip, ports.join(','), String(count), String(waitMs)],
    { timeoutMs: count * (waitMs + 100) + 10_000 },
  );
  if (r.code !== 0) throw new Error(`client in ${ns} failed: ${r.stderr.trim() || r.code}`);
  return JSON.parse(r.stdout) as Spread;
}
