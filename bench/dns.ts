// DNS: queries per second and latency with dnsperf against weft's DNS server
// and, in the same run, dnsmasq serving the same 1000 names from a hosts file
// (the anchor). Loopback only.
//
//   apt-get install -y --no-install-recommends dnsperf dnsmasq-base
//   npm run build && node dist/bench/dns.js [--seconds 10]
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DnsServer } from '../dns/server.js';
import { NameTable } from '../dns/table.js';

const seconds = Number(process.argv[process.argv.indexOf('--seconds') + 1]) || 10;
const N = 1000;

function dnsperf(port: number, queries: string): Promise<{ qps: number; avgMs: number; sdMs: number }> {
  return new Promise((resolve, reject) => {
    execFile(
      'dnsperf',
      ['-s', '127.0.0.1', '-p', String(port), '-d', queries, '-c', '4', '-q', '100', '-l', String(seconds)],
      { timeout: (seconds + 30) * 1000 },
      (err, out) => {
        if (err) return reject(new Error(`dnsperf: ${err.message}`));
        const num = (re: RegExp) => Number(re.exec(String(out))?.[1] ?? NaN);
        resolve({
          qps: num(/Queries per second:\s+([\d.]+)/),
          avgMs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1000,
          sdMs: num(/Latency StdDev \(s\):\s+([\d.]+)/) * 1000,
        });
      },
    );
  });
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-bench-dns-'));
  const names = Array.from({ length: N }, (_, i) => ({
    hostname: `name${i}.weft.local.`,
    container: `c${i}`,
    ip: `10.32.${i >> 8}.${(i & 255) + 1}`,
  }));
  const queries = join(dir, 'queries');
  writeFileSync(queries, names.map((n) => `${n.hostname.slice(0, -1)} A`).join('\n') + '\n');
  const hosts = join(dir, 'hosts');
  writeFileSync(hosts, names.map((n) => `${n.ip} ${n.hostname.slice(0, -1)}`).join('\n') + '\n');

  const table = new NameTable();
  table.merge([{ peer: '02:00:00:00:00:01', version: 1, entries: names }]);
  const weftPort = 20000 + Math.floor(Math.random() * 10000);
  const server = new DnsServer(table, {
    host: '127.0.0.1',
    port: weftPort,
    domain: 'weft.local',
    ttl: 1,
    upstreams: [],
    upstreamTimeoutMs: 500,
  });
  await server.start();
  // The same server on Node's dgram sockets, for comparison with the batched I/O.
  const dgramPort = weftPort + 2;
  const plain = new DnsServer(table, {
    host: '127.0.0.1',
    port: dgramPort,
    domain: 'weft.local',
    ttl: 1,
    upstreams: [],
    upstreamTimeoutMs: 500,
    batchedUdp: false,
  });
  await plain.start();

  const dnsmasqPort = weftPort + 1;
  const dnsmasq = spawn(
    'dnsmasq',
    [
      '--keep-in-foreground',
      '--no-resolv',
      '--no-hosts',
      `--addn-hosts=${hosts}`,
      '--listen-address=127.0.0.1',
      '--bind-interfaces',
      `--port=${dnsmasqPort}`,
      '--cache-size=10000',
      `--pid-file=${join(dir, 'pid')}`,
    ],
    { stdio: 'ignore' },
  );
  try {
    await new Promise((r) => setTimeout(r, 500));
    // dnsperf runs in a child process; weft's server answers in this one.
    const anchor = await dnsperf(dnsmasqPort, queries);
    const weft = await dnsperf(weftPort, queries);
    const weftDgram = await dnsperf(dgramPort, queries);
    console.log(`dns: dnsperf -c 4 -q 100 -l ${seconds}, ${N} names, loopback`);
    for (const [label, r] of [
      ['dnsmasq (hosts file)', anchor],
      [`weft (${server.udpIo} UDP)`, weft],
      ['weft (dgram UDP)', weftDgram],
    ] as const) {
      console.log(
        `${label.padEnd(22)} ${r.qps.toFixed(0).padStart(8)} queries/s   latency avg ${r.avgMs.toFixed(3)} ms, stddev ${r.sdMs.toFixed(3)} ms`,
      );
    }
    console.log(
      `ratio weft/dnsmasq: ${(weft.qps / anchor.qps).toFixed(2)} with ${server.udpIo} UDP, ${(weftDgram.qps / anchor.qps).toFixed(2)} with dgram (goal >= 0.6)`,
    );
  } finally {
    dnsmasq.kill('SIGKILL');
    server.close();
    plain.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
