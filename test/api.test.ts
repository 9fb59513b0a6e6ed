import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAddress } from '../router/mesh/connection-maker.js';
import { silentLogger } from '../router/mesh/mesh.js';
import type { Report } from '../router/report.js';
import { Router } from '../router/router.js';
import { routerOptions } from './harness/router-options.js';

describe('peer addresses', () => {
  it('accepts host, host:port and [v6]:port, defaulting the port', () => {
    expect(parseAddress('198.18.0.1', 6783)).toEqual({ host: '198.18.0.1', port: 6783, addr: '198.18.0.1:6783' });
    expect(parseAddress('peer.example:7000', 6783)).toEqual({ host: 'peer.example', port: 7000, addr: 'peer.example:7000' });
    expect(parseAddress('[fd00::1]:7000', 6783)).toEqual({ host: 'fd00::1', port: 7000, addr: '[fd00::1]:7000' });
  });
  it('rejects anything else with a readable error', () => {
    expect(() => parseAddress('a b', 6783)).toThrow(/invalid peer address "a b"/);
    expect(() => parseAddress('198.18.0.1:0', 6783)).toThrow(/invalid port/);
    expect(() => parseAddress('198.18.0.1:99999', 6783)).toThrow(/invalid port/);
    expect(() => parseAddress('', 6783)).toThrow(/invalid peer address/);
  });
});

describe('HTTP API', () => {
  let router: Router;
  let dataDir: string;
  let base: string;
  // A target without a port gets this router's own mesh port.
  const port = 40000 + Math.floor(Math.random() * 10000);
  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'weft-api-'));
    router = await Router.start(routerOptions({ dataDir, port, nickname: 'api' }), silentLogger);
    base = `http://127.0.0.1:${port + 1}`;
  });
  afterAll(async () => {
    await router.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('serves status text and the JSON report', async () => {
    const text = await (await fetch(`${base}/status`)).text();
    expect(text).toMatch(/Name: [0-9a-f:]{17}\(api\)/);
    const report = (await (await fetch(`${base}/report`)).json()) as Report;
    expect(report.nickname).toBe('api');
    expect(report.peers).toHaveLength(1);
  });

  it('adds and forgets targets from JSON and from form fields', async () => {
    let res = await fetch(`${base}/connect`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ peers: ['198.18.9.9'] }) });
    expect(res.status).toBe(200);
    res = await fetch(`${base}/connect`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'peer=198.18.9.10:7000&peer=198.18.9.11' });
    expect(((await res.json()) as { targets: string[] }).targets.sort()).toEqual(['198.18.9.10:7000', `198.18.9.11:${port}`, `198.18.9.9:${port}`]);
    res = await fetch(`${base}/forget`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ peers: ['198.18.9.9'] }) });
    expect(((await res.json()) as { forgotten: string[] }).forgotten).toEqual([`198.18.9.9:${port}`]);
    res = await fetch(`${base}/connect`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ peers: ['198.18.9.12'], replace: true }) });
    expect(((await res.json()) as { targets: string[] }).targets).toEqual([`198.18.9.12:${port}`]);
    expect(await (await fetch(`${base}/status/targets`)).text()).toBe(`198.18.9.12:${port}\n`);
  });

  it('answers bad requests with 4xx and a message, changing nothing', async () => {
    const before = await (await fetch(`${base}/status/targets`)).text();
    let res = await fetch(`${base}/connect`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ peers: ['198.18.9.13', 'not an address'] }) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(/invalid peer address "not an address"/);
    expect(await (await fetch(`${base}/status/targets`)).text()).toBe(before);
    res = await fetch(`${base}/connect`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"peers": ' });
    expect(res.status).toBe(400);
    res = await fetch(`${base}/connect`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ peers: 5 }) });
    expect(res.status).toBe(400);
    res = await fetch(`${base}/status/nope`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: string }).error).toMatch(/views: peers, connections, targets/);
    res = await fetch(`${base}/no/such/thing`);
    expect(res.status).toBe(404);
  });
});
