// The metrics endpoint: the registry is made, and Node's own metrics (and their event-loop delay
// monitor, which wakes the router every 10 ms) start, with the first scrape, and that scrape already
// has event-loop samples; a registry that cannot be made is a 500 (the scraper not told why) and tried
// again after a while; anything but GET /metrics is a 404.
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
    let loads = 0;
    server = await serveMetrics(
      async () => {
        loads++;
        return registry;
      },
      '127.0.0.1',
      0,
    );
    const port = (server.address() as { port: number }).port;
    expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' })).status).toBe(404);
    expect(loads).toBe(0);
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
    expect(loads).toBe(1);
  });

  it('answers 500 when the registry cannot be made, without the why, and tries again after a while', async () => {
    let loads = 0;
    const told: string[] = [];
    server = await serveMetrics(
      async () => {
        if (++loads === 1) throw new Error('cannot find /secret/install/path/chunk.js');
        return new Registry();
      },
      '127.0.0.1',
      0,
      { onLoadError: (err) => told.push(err.message), retryMs: 300 },
    );
    const port = (server.address() as { port: number }).port;
    const scrape = () => fetch(`http://127.0.0.1:${port}/metrics`);
    const first = await scrape();
    expect(first.status).toBe(500);
    const text = await first.text();
    expect(text).toContain('could not be loaded');
    expect(text).not.toContain('/secret');
    expect(told).toEqual(['cannot find /secret/install/path/chunk.js']);
    // Within the retry delay: the same answer, no new attempt.
    expect((await scrape()).status).toBe(500);
    expect(loads).toBe(1);
    await new Promise((r) => setTimeout(r, 400));
    const later = await scrape();
    expect(later.status).toBe(200);
    expect(metric(await later.text(), 'weft_process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(loads).toBe(2);
  });
});
