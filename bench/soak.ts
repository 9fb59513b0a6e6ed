// Soak: a three-host cluster under steady load for a set time, reporting how the
// routers' memory moves. Load: containers attached (with a DNS name) and
// detached at random on random hosts, OPS_PER_SECOND operations a second, and a
// DNS client on every host resolving those names as fast as its answers come
// back. Each router's resident memory is sampled every 5 s; after a warm-up
// (the first quarter, or --warmup seconds) the growth is the least-squares
// slope, in MiB per hour.
// At the end: every host's containers are what the load left attached, and the
// DNS tables agree.
//
//   npm run build && node dist/bench/soak.js [--seconds 300] [--warmup S] [--ops 2] [--slots 4]
//   (CI runs it when WEFT_SOAK_SECONDS is set: .ci/run)
import { spawn, type ChildProcess } from 'node:child_process';
import { Cluster, FAST_THREE_HOSTS, eventually, type Host } from '../test/harness/cluster.js';
import { seededRandom } from '../test/harness/random.js';
import { numberArg } from './args.js';
import { rssMiB } from './measure.js';
import { run } from '../test/harness/exec.js';
import { metric } from '../test/harness/prometheus.js';

const SECONDS = numberArg('seconds', Number(process.env.WEFT_SOAK_SECONDS ?? 300));
// Resident memory climbs for the first half hour under this load (V8's and
// malloc's reserves sizing to it), so an hour's slope wants a longer warm-up.
const WARMUP_SECONDS = numberArg('warmup', SECONDS / 4);
if (!(WARMUP_SECONDS >= 0 && WARMUP_SECONDS < SECONDS)) {
  throw new Error(`--warmup ${WARMUP_SECONDS}: wants 0 or more seconds, and fewer than --seconds ${SECONDS}`);
}
const OPS_PER_SECOND = numberArg('ops', 2);
const SLOTS = numberArg('slots', 4); // container namespaces per host, attached and detached in turn

const RESOLVER = `
const { Resolver } = require('node:dns').promises;
const r = new Resolver({ timeout: 1000, tries: 1 }); r.setServers(['169.254.83.83']);
const [names, seconds] = [process.argv[1].split(','), Number(process.argv[2])];
const out = { answered: 0, nxdomain: 0, errors: 0, codes: {}, at: [] };
const start = Date.now(); const end = start + seconds * 1000;
async function loop() { while (Date.now() < end) {
  const name = names[Math.floor(Math.random() * names.length)];
  try { await r.resolve4(name); out.answered++; }
  catch (e) { if (e.code === 'ENOTFOUND') out.nxdomain++; else {
    out.errors++; out.codes[e.code] = (out.codes[e.code] ?? 0) + 1;
    if (out.at.length < 20) out.at.push(((Date.now() - start) / 1000).toFixed(1) + ' s ' + e.code + ' ' + name); } } } }
Promise.all([loop(), loop(), loop(), loop()]).then(() => process.stdout.write(JSON.stringify(out)));`;

const METRICS_ADDR = '127.0.0.1:9102'; // in each host's namespace

/** A router's metrics, as Prometheus text ('' when it does not answer). */
async function scrape(h: Host): Promise<string> {
  return (await h.exec('curl', ['-s', '--max-time', '5', `http://${METRICS_ADDR}/metrics`])).stdout;
}

/** UDP datagrams a namespace dropped for a full receive buffer, and its UDP input errors. */
async function udpDrops(ns: string): Promise<string> {
  const lines = (await run('ip', ['netns', 'exec', ns, 'cat', '/proc/net/snmp'])).stdout
    .split('\n')
    .filter((l) => l.startsWith('Udp:'));
  if (lines.length < 2) return 'unknown';
  const keys = lines[0].split(/\s+/);
  const vals = lines[1].split(/\s+/);
  const v = (k: string) => vals[keys.indexOf(k)] ?? '?';
  return `RcvbufErrors ${v('RcvbufErrors')}, InErrors ${v('InErrors')}`;
}

/** Least-squares slope of y over x. */
function slope(points: [number, number][]): number {
  const n = points.length;
  const mx = points.reduce((s, p) => s + p[0], 0) / n;
  const my = points.reduce((s, p) => s + p[1], 0) / n;
  const num = points.reduce((s, p) => s + (p[0] - mx) * (p[1] - my), 0);
  const den = points.reduce((s, p) => s + (p[0] - mx) ** 2, 0);
  return den === 0 ? 0 : num / den;
}

async function main(): Promise<void> {
  const cluster = await Cluster.create(3, {
    routerArgs: [...FAST_THREE_HOSTS, '--metrics-addr', METRICS_ADDR],
  });
  const resolvers: ChildProcess[] = [];
  try {
    const hosts = await cluster.launchAll();
    const rnd = seededRandom(1);
    const slots: { host: Host; ns: string; name: string; attached: boolean }[] = [];
    for (const h of hosts)
      for (let i = 0; i < SLOTS; i++)
        slots.push({
          host: h,
          ns: await cluster.container(`s${h.index}-${i}`),
          name: `s${h.index}-${i}.weft.local`,
          attached: false,
        });
    // A DNS client on every host, in a container of its own.
    const clientResults: Promise<string>[] = [];
    const clientNs: string[] = [];
    for (const h of hosts) {
      const ns = await cluster.container(`dnsclient${h.index}`);
      clientNs.push(ns);
      const a = await h.weft(['attach', `netns:${ns}`]);
      if (a.code !== 0) throw new Error(`attach the DNS client on ${h.nickname}: ${a.stderr}`);
      const child = spawn(
        'ip',
        ['netns', 'exec', ns, process.execPath, '-e', RESOLVER, slots.map((s) => s.name).join(','), String(SECONDS)],
        { stdio: ['ignore', 'pipe', 'ignore'] },
      );
      resolvers.push(child);
      clientResults.push(
        new Promise((res) => {
          let text = '';
          child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
          child.on('exit', () => res(text));
        }),
      );
    }
    const pids = hosts.map((h) => h.routerPid()!);
    const samples: [number, number][][] = hosts.map(() => []);
    const t0 = Date.now();
    const ops = { attach: 0, detach: 0, failed: 0 };
    const sampler = setInterval(
      () => hosts.forEach((_, i) => samples[i].push([(Date.now() - t0) / 3_600_000, rssMiB(pids[i])])),
      5000,
    );
    hosts.forEach((_, i) => samples[i].push([0, rssMiB(pids[i])]));
    // Every 30 s: each router's heap in use, and its longest event-loop stall (a DNS answer waits that long).
    const heap: [number, number][][] = hosts.map(() => []);
    const stalls: string[][] = hosts.map(() => []);
    const maxLag = hosts.map(() => 0);
    let scraping = false;
    const scraper = setInterval(() => {
      if (scraping) return;
      scraping = true;
      void Promise.all(
        hosts.map(async (h, i) => {
          const text = await scrape(h);
          const t = (Date.now() - t0) / 3_600_000;
          const used = metric(text, 'weft_nodejs_heap_size_used_bytes');
          if (used !== null) heap[i].push([t, used / 2 ** 20]);
          const lag = metric(text, 'weft_nodejs_eventloop_lag_max_seconds') ?? 0;
          maxLag[i] = Math.max(maxLag[i], lag);
          if (lag > 0.25 && stalls[i].length < 20)
            stalls[i].push(`${(t * 3600).toFixed(0)} s: ${(lag * 1000).toFixed(0)} ms`);
        }),
      ).finally(() => (scraping = false));
    }, 30_000);
    while (Date.now() - t0 < SECONDS * 1000) {
      const started = Date.now();
      const s = slots[Math.floor(rnd() * slots.length)];
      const r = s.attached
        ? await s.host.weft(['detach', `netns:${s.ns}`])
        : await s.host.weft(['attach', '--hostname', s.name, `netns:${s.ns}`]);
      if (r.code === 0) {
        s.attached = !s.attached;
        ops[s.attached ? 'attach' : 'detach']++;
      } else {
        ops.failed++;
        console.error(`${s.attached ? 'detach' : 'attach'} ${s.ns} on ${s.host.nickname}: ${r.stderr.trim()}`);
      }
      await new Promise((res) => setTimeout(res, Math.max(0, 1000 / OPS_PER_SECOND - (Date.now() - started))));
    }
    clearInterval(sampler);
    clearInterval(scraper);
    const dns = (await Promise.all(clientResults)).map((t) =>
      t
        ? (JSON.parse(t) as {
            answered: number;
            nxdomain: number;
            errors: number;
            codes: Record<string, number>;
            at: string[];
          })
        : null,
    );

    // What the load left: every host lists exactly the slots it has attached, and all DNS tables agree.
    const psOk: boolean[] = [];
    for (const h of hosts) {
      const listed = (await h.weft(['ps'])).stdout
        .split('\n')
        .filter((l) => l.startsWith('netns:') && !l.includes('dnsclient'))
        .map((l) => l.split(' ')[0].slice('netns:'.length))
        .sort();
      const want = slots
        .filter((s) => s.host === h && s.attached)
        .map((s) => s.ns)
        .sort();
      psOk.push(JSON.stringify(listed) === JSON.stringify(want));
    }
    const dnsTables = () =>
      Promise.all(
        hosts.map(async (h) =>
          JSON.stringify(
            (await h.report<{ dns: { entries: { hostname: string; ip: string }[] } }>()).dns.entries
              .map((e) => `${e.hostname} ${e.ip}`)
              .sort(),
          ),
        ),
      );
    let tables = await dnsTables();
    await eventually(
      'the DNS tables agree',
      async () => (tables = await dnsTables()).every((t) => t === tables[0]),
      10_000,
    ).catch(() => undefined);

    console.log(
      `soak: 3 hosts, ${SECONDS} s (warm-up ${WARMUP_SECONDS} s), ${OPS_PER_SECOND} attach/detach a second over ${slots.length} containers, a DNS client per host`,
    );
    console.log(`  operations: ${ops.attach} attaches, ${ops.detach} detaches, ${ops.failed} failed`);
    for (const [i, d] of dns.entries()) {
      console.log(
        `  DNS client on host${i + 1}: ${d ? `${d.answered} answered, ${d.nxdomain} NXDOMAIN (detached at the time), ${d.errors} errors or time-outs (${(d.answered / SECONDS).toFixed(0)}/s)` : 'no result'}`,
      );
      if (d?.errors) console.log(`    errors by code ${JSON.stringify(d.codes)}; first at ${d.at.join('; ')}`);
      console.log(
        `    UDP drops: host ${await udpDrops(hosts[i].ns)}; client's container ${await udpDrops(clientNs[i])}`,
      );
    }
    hosts.forEach((h, i) => {
      const after = samples[i].filter(([t]) => t * 3600 >= WARMUP_SECONDS);
      const first = after[0]?.[1] ?? NaN;
      const last = samples[i][samples[i].length - 1][1];
      console.log(
        `  ${h.nickname} router RSS: ${samples[i][0][1].toFixed(1)} MiB at start, ${first.toFixed(1)} after warm-up, ${last.toFixed(1)} at the end; growth after warm-up ${slope(after).toFixed(1)} MiB/hour (${after.length} samples)`,
      );
      const heapAfter = heap[i].filter(([t]) => t * 3600 >= WARMUP_SECONDS);
      console.log(
        `    heap in use after warm-up ${heapAfter[0]?.[1].toFixed(1) ?? '?'} MiB, at the end ${heap[i].at(-1)?.[1].toFixed(1) ?? '?'} MiB, growth ${heapAfter.length > 1 ? slope(heapAfter).toFixed(1) : '?'} MiB/hour; longest event-loop stall ${(maxLag[i] * 1000).toFixed(0)} ms${stalls[i].length ? ` (over 250 ms at ${stalls[i].join(', ')})` : ''}`,
      );
    });
    console.log(
      `  end state: containers listed as attached ${psOk.every(Boolean) ? 'match' : 'DO NOT match'} on every host; DNS tables ${tables.every((t) => t === tables[0]) ? 'agree' : 'DIFFER'}`,
    );
    if (!psOk.every(Boolean) || !tables.every((t) => t === tables[0]) || ops.failed > 0) process.exitCode = 1;
  } finally {
    for (const r of resolvers) r.kill('SIGKILL');
    await cluster.cleanup();
  }
}

await main();
