// The metrics endpoint: Node's own metrics (and their event-loop delay monitor, which wakes the router
// every 10 ms) start with the first scrape, and that scrape already has event-loop samples; anything
// but GET /metrics is a 404.
import { afterEach, describe, expect, it } from 'vitest';
import type http from 'node:http';
import { Registry } from 'prom-client';
import { serveMetrics } from '../../../router/metrics.js';
import { metric } from '../../harness/prometheus.js';

let server: http.Server | null = null;
afterEach(async () => {
  await new Promise((r) => server?.close(r) ?? r(undefined));
  server = null;
});

describe('the metrics endpoint', () => {
  it("starts Node's metrics at the first scrape, with event-loop samples in it", async () => {
    const registry = new Registry();
    server = await serveMetrics(registry, '127.0.0.1', 0);
    const port = (server.address() as { port: number }).port;
    expect(registry.getSingleMetric('weft_nodejs_eventloop_lag_max_seconds')).toBeUndefined();
    expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' })).status).toBe(404);
    expect(registry.getSingleMetric('weft_nodejs_eventloop_lag_max_seconds')).toBeUndefined();
    // Two scrapes at once, the first ever: both wait for the monitor's samples.
    const [first, beside] = await Promise.all(
      [0, 20].map(async (ms) => {
        await new Promise((r) => setTimeout(r, ms));
        return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      }),
    );
    expect(metric(beside, 'weft_nodejs_eventloop_lag_min_seconds')).toBeLessThan(5);
    const max = metric(first, 'weft_nodejs_eventloop_lag_max_seconds');
    expect(max).toBeGreaterThan(0);
    expect(max).toBeLessThan(5);
    expect(metric(first, 'weft_process_cpu_seconds_total')).toBeGreaterThan(0);
    const second = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metric(second, 'weft_nodejs_heap_size_used_bytes')).toBeGreaterThan(0);
  });
});
