// Fuzzing the HTTP API: arbitrary paths, parameters and bodies for every endpoint
// that changes state. Every answer is a 2xx or a 4xx with a JSON error (never a
// 5xx, never a hang), the router keeps answering, and its state stays sound: no
// address owned twice, and none outside the range unless explicitly claimed.
// Left out on purpose: POST /connect (an arbitrary string may be a real address:
// the fuzzer must not make the router dial the world) and DELETE /peer (reset).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../lib/logger.js';
import type { Report } from '../../../router/contract.js';
import { Router } from '../../../router/router.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';

describe('HTTP API under fuzzed requests', () => {
  let router: Router;
  let dataDir: string;
  let base: string;
  let port: number;
  beforeAll(async () => {
    port = await freePorts(2);
    dataDir = mkdtempSync(join(tmpdir(), 'weft-api-fuzz-'));
    router = await Router.start(
      routerOptions({ dataDir, port, nickname: 'fuzz', ipallocInit: 'consensus=1' }),
      silentLogger,
    );
    base = `http://127.0.0.1:${port + 1}`;
  });
  afterAll(async () => {
    await router.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const segment = fc.oneof(
    fc.string({ maxLength: 40 }),
    fc.constantFrom(
      '10.32.0.1',
      '10.32.0.1/12',
      'netns:x',
      'pid:1',
      'cni:abc',
      '..',
      '%',
      '10.99.0.1',
      '0.0.0.0',
      '255.255.255.255/33',
    ),
  );
  const body = fc.oneof(
    fc.constant(undefined),
    fc.jsonValue({ maxDepth: 3 }),
    fc.record(
      {
        container: fc.oneof(fc.string(), fc.integer(), fc.constant('netns:nothere')),
        cidrs: fc.oneof(fc.array(segment, { maxLength: 3 }), fc.string()),
        subnet: fc.oneof(segment, fc.integer()),
        hostname: fc.oneof(fc.string(), fc.constant('a.weft.local')),
        netns: fc.string(),
        ifname: fc.string(),
      },
      { requiredKeys: [] },
    ),
    fc.record(
      {
        fqdn: fc.oneof(fc.string(), fc.constant('x.weft.local')),
        ips: fc.oneof(fc.array(segment, { maxLength: 3 }), fc.string()),
      },
      { requiredKeys: [] },
    ),
    fc.record(
      {
        name: fc.oneof(fc.string({ maxLength: 70 }), fc.constantFrom('svc', 'a-b', '-x')),
        group: fc.oneof(fc.string(), fc.constant('web')),
        backends: fc.oneof(fc.array(segment, { maxLength: 3 }), fc.string(), fc.integer()),
        affinity: fc.oneof(fc.string(), fc.constantFrom('none', 'client')),
        check: fc.oneof(fc.string(), fc.constantFrom('tcp:80', 'tcp:0', 'tcp:70000')),
      },
      { requiredKeys: [] },
    ),
    fc.record(
      {
        to: fc.oneof(fc.string(), fc.constant('web')),
        from: fc.oneof(segment, fc.constant('any')),
        proto: fc.oneof(fc.string(), fc.constantFrom('tcp', 'icmp')),
        port: fc.oneof(fc.string(), fc.integer()),
        egress: fc.oneof(fc.boolean(), fc.string()),
      },
      { requiredKeys: [] },
    ),
    fc.string({ maxLength: 200 }),
  );
  const request = fc.record({
    route: fc.constantFrom(
      'POST /attach',
      'DELETE /attach/:a',
      'POST /expose',
      'DELETE /expose',
      'PUT /name/:a',
      'DELETE /name/:a',
      'GET /name/:a',
      'POST /ip/:a',
      'PUT /ip/:a/:b',
      'GET /ip/:a',
      'DELETE /ip/:a/:b',
      'DELETE /peer/:a',
      'POST /forget',
      'GET /status/:a',
      'GET /ring',
      'POST /services',
      'GET /services/:a',
      'DELETE /services/:a',
      'POST /policy',
      'DELETE /policy/:a',
      'GET /policy/check',
    ),
    a: segment,
    b: segment,
    query: fc.oneof(
      fc.constant(''),
      fc.constantFrom('?timeout=0', '?timeout=-1', '?timeout=abc', '?fqdn=&ip=', '?subnet=10.32.0.0/33'),
      fc.string({ maxLength: 20 }).map((s) => `?${encodeURIComponent(s)}=1`),
    ),
    body,
    raw: fc.boolean(),
  });

  it('answers every request with a 2xx or a 4xx and a reason, and stays sound', async () => {
    let statuses: Record<number, number> = {};
    // Addresses outside the range may be owned, but only when explicitly claimed (as Weave allows).
    const claimedOutside = new Set<string>();
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const [method, template] = r.route.split(' ');
        const path =
          template.replace(':a', encodeURIComponent(r.a)).replace(':b', encodeURIComponent(r.b)) +
          (r.route === 'GET /ring' ? '?timeout=1' : r.query);
        const init: RequestInit = { method, signal: AbortSignal.timeout(10_000) };
        if (r.body !== undefined && method !== 'GET') {
          init.headers = { 'content-type': 'application/json' };
          init.body = r.raw && typeof r.body === 'string' ? r.body : JSON.stringify(r.body);
        }
        const res = await fetch(base + path, init);
        const text = await res.text();
        statuses[res.status] = (statuses[res.status] ?? 0) + 1;
        expect(res.status, `${method} ${path} ${String(init.body)} -> ${text}`).toBeLessThan(500);
        if (res.status >= 400) expect(JSON.parse(text).error, text).toMatch(/\S/);
        if (res.status === 200 && method === 'PUT' && template.startsWith('/ip/'))
          claimedOutside.add(text.split('/')[0]);
      }),
      { numRuns: 400 },
    );
    // Still answering, and IPAM sound: every owned address in the range, none owned twice.
    const report = (await (await fetch(`${base}/report`)).json()) as Report;
    const addrs = report.ipam.owned.flatMap((o) => o.addresses);
    expect(new Set(addrs).size).toBe(addrs.length);
    for (const a of addrs)
      if (!/^10\.(3[2-9]|4[0-7])\.\d+\.\d+$/.test(a))
        expect(claimedOutside, `${a} is owned, outside the range, and was never claimed`).toContain(a);
    expect(Object.keys(statuses).length).toBeGreaterThan(1); // both successes and refusals happened
    statuses = {};
  });
});
