// IPv6 addresses through the router's API and CLI: a ring of their own (--ipalloc-range6), allocated,
// claimed, looked up and freed beside IPv4, kept across a restart, shown by `weft status ipam`; bad
// input gets a 400 and changes nothing. No root needed: an in-process router without a datapath.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { callRouter } from '../../../cli/http.js';
import { silentLogger } from '../../../lib/logger.js';
import { Router } from '../../../router/router.js';
import { run } from '../../harness/exec.js';
import { WEFT_CLI } from '../../harness/cluster.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';

describe('IPv6 address allocation', () => {
  const cleanup: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  async function start(dataDir: string, port: number, over: Parameters<typeof routerOptions>[0] | object = {}) {
    const router = await Router.start(
      routerOptions({ dataDir, port, nickname: 'six', ipallocInit: 'consensus=1', ...over }),
      silentLogger,
    );
    // One connection per request (the router restarts on the same port).
    const call = async (method: string, path: string) => {
      const res = await callRouter(`127.0.0.1:${port + 1}`, method, path, undefined, 10_000);
      return { status: res.status, body: res.text };
    };
    return { router, call };
  }

  it('allocates, claims, looks up and frees both families; keeps them across a restart', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-ipam6-'));
    cleanup.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const port = await freePorts(3);
    let { router, call } = await start(dataDir, port, { metricsAddr: `127.0.0.1:${port + 2}` });
    cleanup.push(() => router.stop());

    expect(await call('POST', '/ip/c1?family=6')).toEqual({ status: 200, body: 'fd77:6566:7400::1/48' });
    expect(await call('POST', '/ip/c1')).toEqual({ status: 200, body: '10.32.0.1/12' });
    expect(await call('POST', '/ip/c1?family=6')).toEqual({ status: 200, body: 'fd77:6566:7400::1/48' }); // idempotent
    expect(await call('GET', '/ip/c1')).toEqual({ status: 200, body: '10.32.0.1/12 fd77:6566:7400::1/48' });
    // A subnet names its own family; a claim is IPv6 when its address is.
    expect(await call('POST', `/ip/c2?subnet=${encodeURIComponent('fd77:6566:7400:1::/64')}`)).toEqual({
      status: 200,
      body: 'fd77:6566:7400:1::1/64',
    });
    expect(await call('PUT', `/ip/c3/${encodeURIComponent('FD77:6566:7400::ABCD')}/64`)).toEqual({
      status: 200,
      body: 'fd77:6566:7400::abcd/64',
    });
    const taken = await call('PUT', `/ip/c4/${encodeURIComponent('fd77:6566:7400::abcd')}`);
    expect(taken.status).toBe(409);
    expect(taken.body).toMatch(/fd77:6566:7400::abcd is already allocated to c3/);

    // Bad input: a clear 400, nothing allocated.
    for (const [method, path, says] of [
      ['POST', `/ip/c5?subnet=${encodeURIComponent('fd77::/129')}`, /prefix must be 0-128/],
      [
        'POST',
        `/ip/c5?subnet=${encodeURIComponent('fd00::/64')}`,
        /not inside the allocation range fd77:6566:7400::\/48/,
      ],
      ['POST', `/ip/c5?subnet=${encodeURIComponent('fd77:6566:7400::/127')}`, /too small \(at most \/126\)/],
      ['PUT', `/ip/c5/${encodeURIComponent('fd77:zz::1')}`, /invalid IPv6 address/],
      ['PUT', `/ip/c5/${encodeURIComponent('fd77:6566:7400::5')}/129`, /invalid prefix length/],
      ['POST', '/ip/c5?family=7', /family/],
      ['POST', `/ip/c5?family=6&subnet=${encodeURIComponent('10.33.0.0/16')}`, /are not of one family/],
    ] as const) {
      const r = await call(method, path);
      expect(r.status, path).toBe(400);
      expect(r.body, path).toMatch(says);
    }
    expect((await call('GET', '/ip/c5')).status).toBe(404);

    // A name for a container without addresses given: its IPv4 ones (the overlay carries no IPv6 to
    // containers yet); IPv6 ones only when given.
    const named = await callRouter(`127.0.0.1:${port + 1}`, 'PUT', '/name/c1', { fqdn: 'one.weft.local' }, 5000);
    expect(JSON.parse(named.text)).toEqual({ fqdn: 'one.weft.local.', ips: ['10.32.0.1'] });
    const extra = await callRouter(
      `127.0.0.1:${port + 1}`,
      'PUT',
      '/name/c9',
      { fqdn: 'nine.weft.local', ips: ['FD77:6566:7400:0::9'] },
      5000,
    );
    expect(JSON.parse(extra.text)).toEqual({ fqdn: 'nine.weft.local.', ips: ['fd77:6566:7400::9'] });
    expect(JSON.parse((await call('GET', '/name/nine.weft.local')).body).ips).toEqual(['fd77:6566:7400::9']);
    const summary = (await call('GET', '/status')).body;
    expect(summary).toMatch(/Range6: fd77:6566:7400::\/48, default subnet fd77:6566:7400::\/48; ready/);
    const status = (await call('GET', '/status/ipam')).body;
    expect(status).toMatch(/^Allocation range: 10\.32\.0\.0\/12/);
    expect(status).toMatch(/\nIPv6\n {2}Allocation range: fd77:6566:7400::\/48 \(2\^80 addresses\)/);
    expect(status).toMatch(/ {2}Allocated here: {3}3 address\(es\) to 3 container\(s\)/);

    const metrics = await (await fetch(`http://127.0.0.1:${port + 2}/metrics`)).text();
    expect(metrics).toMatch(/^weft_ipam6_addresses\{state="allocated_here"\} 3$/m);
    expect(metrics).toMatch(/^weft_ipam_addresses\{state="allocated_here"\} 1$/m);
    expect(metrics).toMatch(/^weft_ipam6_pending_requests 0$/m);

    // The CLI: --ipv6 asks for one; lookup prints both.
    const env = { ...process.env, WEFT_HTTP_ADDR: `127.0.0.1:${port + 1}` };
    const alloc = await run(process.execPath, [WEFT_CLI, 'ipam', 'alloc', '--ipv6', 'c6'], { env });
    expect(alloc.stdout.trim()).toBe('fd77:6566:7400::2/48');

    // Kept across a restart, and freed together.
    await router.stop();
    ({ router, call } = await start(dataDir, port));
    expect(await call('GET', '/ip/c1')).toEqual({ status: 200, body: '10.32.0.1/12 fd77:6566:7400::1/48' });
    const freed = JSON.parse((await call('DELETE', '/ip/c1')).body) as { freed: string[] };
    expect(freed.freed).toEqual(['10.32.0.1', 'fd77:6566:7400::1']);
    expect((await call('GET', '/ip/c1')).status).toBe(404);
    expect(await call('DELETE', `/ip/c3/${encodeURIComponent('fd77:6566:7400::abcd')}`)).toEqual({
      status: 200,
      body: JSON.stringify({ freed: ['fd77:6566:7400::abcd'] }),
    });
    await router.stop();

    // Its data is for this range6: another is refused, saying how to proceed.
    await expect(start(dataDir, port, { ipallocRange6: 'fd99::/48' })).rejects.toThrow(
      /is for --ipalloc-range6 fd77:6566:7400::\/48, but this router was started with fd99::\/48/,
    );
  });

  it('a range6 never used may change; bad --ipalloc-range6 values stop the start with a clear error', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-ipam6-'));
    cleanup.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const port = await freePorts(2);
    const first = await start(dataDir, port);
    expect((await first.call('POST', '/ip/c1')).body).toBe('10.32.0.1/12'); // IPv4 only: no IPv6 ring started
    await first.router.stop();
    const again = await start(dataDir, port, { ipallocRange6: 'fd99:1::/64' });
    expect((await again.call('POST', '/ip/c2?family=6')).body).toBe('fd99:1::1/64');
    await again.router.stop();
    for (const [over, says] of [
      [{ ipallocRange6: '10.40.0.0/16' }, /--ipalloc-range6 10\.40\.0\.0\/16: an IPv6 block is expected/],
      [{ ipallocRange6: 'fd99::1/48' }, /--ipalloc-range6: .*host bits set \(did you mean fd99::\/48\?\)/],
      [{ ipallocRange6: 'fd99::/127' }, /--ipalloc-range6 fd99::\/127 is too small/],
      [{ ipallocDefaultSubnet6: 'fd00::/64' }, /--ipalloc-default-subnet6 fd00::\/64 is not inside --ipalloc-range6/],
    ] as const) {
      const dir = mkdtempSync(join(tmpdir(), 'weft-ipam6-'));
      cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
      await expect(start(dir, port, over)).rejects.toThrow(says);
    }
  });
});
