// Serves the router's Prometheus metrics on --metrics-addr, at /metrics. The registry and prom-client
// (metrics-registry.ts) are loaded at the first scrape: evaluating prom-client's modules (and the
// https it pulls in) was some 15 ms of every router start, for metrics nobody may ever scrape.
import http from 'node:http';
import type { Registry } from 'prom-client';

/** How long the first scrape waits for the event-loop delay monitor's first samples. */
const NODE_METRICS_FIRST_SAMPLES_MS = 100;
/** After the registry failed to load, scrapes get that answer for this long before it is tried again. */
const LOAD_RETRY_MS = 10_000;

/**
 * Serves /metrics; resolves once listening. `load` makes the registry, at the first scrape.
 * prom-client's process and Node.js metrics (weft_process_cpu_seconds_total,
 * weft_nodejs_heap_size_used_bytes, ...) start then too, not with the router: their event-loop delay
 * monitor wakes the main thread every 10 ms, which cost an idle router about 2.5 ms of CPU a second
 * (bench/README.md), and a router nobody scrapes should not pay it. Every scrape until the monitor
 * has samples waits for them.
 */
export async function serveMetrics(
  load: () => Promise<Registry>,
  host: string,
  port: number,
  /** onLoadError: told why the registry could not be made (the scraper is not); retryMs: tried again no sooner. */
  opts: { onLoadError?: (err: Error) => void; retryMs?: number } = {},
): Promise<http.Server> {
  let prepared: Promise<Registry> | null = null;
  let collecting: Promise<string> | null = null;
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    const failed = (err: Error) =>
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`);
    const respond = (registry: Registry) =>
      // Scrapes at the same time share one collection: the event-loop figures are reset by each.
      (collecting ??= registry.metrics().finally(() => (collecting = null))).then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        failed,
      );
    prepared ??= prepare(load).catch((err: Error) => {
      opts.onLoadError?.(err);
      // Tried again at a scrape after a while (a router upgraded in place underneath, say, until restarted).
      setTimeout(() => (prepared = null), opts.retryMs ?? LOAD_RETRY_MS).unref();
      // Whoever can reach the port learns no more than that: not the install's paths.
      throw new Error('the metrics registry could not be loaded (see the router log)');
    });
    void prepared.then(respond, failed);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

/** The registry, with Node's metrics started and their first samples taken. */
async function prepare(load: () => Promise<Registry>): Promise<Registry> {
  const [registry, { collectDefaultMetrics }] = await Promise.all([load(), import('prom-client')]);
  try {
    collectDefaultMetrics({ register: registry, prefix: 'weft_' });
  } catch {
    // Registered already (a registry served twice): they run, and that is what matters.
  }
  await new Promise((resolve) => setTimeout(resolve, NODE_METRICS_FIRST_SAMPLES_MS));
  return registry;
}
