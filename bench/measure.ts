// What the benchmarks measure with, the same way everywhere: one TCP flow with
// iperf3, ping RTT, a process's CPU time.
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { run } from '../test/harness/exec.js';

/**
 * One TCP flow for `seconds` to a server on `ip` (the client connects to `target`: the same, or a VIP
 * that leads there): Gbit/s, and the TCP RTT under load (iperf3's mean over the flow, from tcp_info), µs.
 */
export async function iperf(
  serverNs: string,
  clientNs: string,
  ip: string,
  seconds: number,
  target = ip,
): Promise<{ gbit: number; tcpRtt: number }> {
  const server = spawn('ip', ['netns', 'exec', serverNs, 'iperf3', '-s', '-1', '-B', ip], { stdio: 'ignore' });
  const exited = new Promise((r) => server.once('exit', r));
  try {
    // Listening before the client starts (a fixed wait lost the race now and then under load).
    for (let i = 0; i < 100; i++) {
      if ((await run('ip', ['netns', 'exec', serverNs, 'ss', '-Hltn', 'sport = :5201'])).stdout.includes(':5201'))
        break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const r = await run('ip', ['netns', 'exec', clientNs, 'iperf3', '-c', target, '-t', String(seconds), '-J'], {
      timeoutMs: (seconds + 20) * 1000,
    });
    if (r.code !== 0) throw new Error(`iperf3 ${clientNs} -> ${target}: ${r.stderr || r.stdout.slice(0, 300)}`);
    const j = JSON.parse(r.stdout) as {
      error?: string;
      end: { sum_received?: { bits_per_second: number }; streams: { sender: { mean_rtt?: number } }[] };
    };
    if (j.error || !j.end.sum_received) throw new Error(`iperf3 ${clientNs} -> ${target}: ${j.error ?? 'no result'}`);
    return { gbit: j.end.sum_received.bits_per_second / 1e9, tcpRtt: j.end.streams[0]?.sender.mean_rtt ?? NaN };
  } finally {
    server.kill('SIGKILL');
    await exited; // gone, and its port free, before the next measurement starts another
  }
}

/** Median ping RTT of 200, µs. */
export async function rtt(ns: string, ip: string): Promise<number> {
  const r = await run('ip', ['netns', 'exec', ns, 'ping', '-c', '200', '-i', '0.005', ip], { timeoutMs: 30_000 });
  const times = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])).sort((x, y) => x - y);
  if (times.length === 0) throw new Error(`ping ${ns} -> ${ip} failed: ${r.stdout.slice(-200)}`);
  return times[Math.floor(times.length / 2)] * 1000;
}

/** User + system CPU seconds in a /proc stat line (of a process or of one of its threads). */
function statCpuSeconds(stat: string): number {
  const f = stat.split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (100/s)
}

/** CPU seconds (user + system) a process has used so far. */
export function cpuSeconds(pid: number): number {
  return statCpuSeconds(readFileSync(`/proc/${pid}/stat`, 'utf8'));
}

/**
 * CPU seconds so far of a process's main thread (where JavaScript runs) and of its other threads
 * together (V8's collector and compiler, libuv's pool, the addon's), from /proc/PID/task.
 */
export function threadCpuSeconds(pid: number): { main: number; others: number } {
  let [main, others] = [0, 0];
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // the thread ended meanwhile
    }
    const secs = statCpuSeconds(stat);
    if (Number(tid) === pid) main += secs;
    else others += secs;
  }
  return { main, others };
}

/** A process's resident memory now, MiB (NaN when /proc does not say). */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}
