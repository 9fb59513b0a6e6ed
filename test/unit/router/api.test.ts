import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { callRouter } from '../../../cli/http.js';
import { run } from '../../harness/exec.js';
import { WEFT_CLI } from '../../harness/cluster.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAddress } from '../../../net/host-port.js';
import { silentLogger } from '../../../lib/logger.js';
import type { Report } from '../../../router/contract.js';
import { Router } from '../../../router/router.js';
import { type ApiSources, buildApi } from '../../../router/api/index.js';
import { freePorts } from '../../harness/ports.js';
import { routerOptions } from '../../harness/router-options.js';

describe('peer addresses', () => {
  it('accepts host, host:port and [v6]:port, defaulting the port', () => {
    expect(parseAddress('198.18.0.1', 6783)).toEqual({ host: '198.18.0.1', port: 6783, addr: '198.18.0.1:6783' });
    expect(parseAddress('peer.example:7000', 6783)).toEqual({
      host: 'peer.example',
      port: 7000,
      addr: 'peer.example:7000',
    });
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
  let port: number;
  beforeAll(async () => {
    port = await freePorts(2);
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

  it('adds and forgets targets from JSON bodies', async () => {
    let res = await fetch(`${base}/connect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ peers: ['198.18.9.9'] }),
    });
    expect(res.status).toBe(200);
    res = await fetch(`${base}/connect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ peers: ['198.18.9.10:7000', '198.18.9.11'] }),
    });
    expect(((await res.json()) as { targets: string[] }).targets.sort()).toEqual([
      '198.18.9.10:7000',
      `198.18.9.11:${port}`,
      `198.18.9.9:${port}`,
    ]);
    res = await fetch(`${base}/forget`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ peers: ['198.18.9.9'] }),
    });
    expect(((await res.json()) as { forgotten: string[] }).forgotten).toEqual([`198.18.9.9:${port}`]);
    res = await fetch(`${base}/connect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ peers: ['198.18.9.12'], replace: true }),
    });
    expect(((await res.json()) as { targets: string[] }).targets).toEqual([`198.18.9.12:${port}`]);
    expect(await (await fetch(`${base}/status/targets`)).text()).toBe(`198.18.9.12:${port}\n`);
  });

  it('a web page cannot use it: form and text/plain posts, a foreign Origin, a foreign Host (DNS rebinding) and cross-site fetches are refused and change nothing', async () => {
    const rules = async () => ((await (await fetch(`${base}/policy`)).json()) as { rules: unknown[] }).rules.length;
    const before = await rules();
    const json = { 'content-type': 'application/json' };
    const body = JSON.stringify({ to: 'db', from: 'any' });
    const tries: [string, RequestInit, number][] = [
      [
        'a form post, as a page sends cross-site without asking',
        { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'to=db&from=any' },
        415,
      ],
      ['a text/plain post', { method: 'POST', headers: { 'content-type': 'text/plain' }, body }, 415],
      ['a foreign Origin', { method: 'POST', headers: { ...json, origin: 'http://evil.example' }, body }, 403],
      ['a cross-site fetch', { method: 'POST', headers: { ...json, 'sec-fetch-site': 'cross-site' }, body }, 403],
    ];
    for (const [what, init, status] of tries) {
      const res = await fetch(`${base}/policy`, init);
      expect(res.status, what).toBe(status);
    }
    // A page on a rebound name reaches 127.0.0.1 with its own name as Host: refused, for reading too.
    for (const path of ['/report', '/policy']) {
      const res = await rawGet(port + 1, path, 'rebind.evil.example:' + (port + 1));
      expect(res.status).toBe(403);
      expect(res.body).not.toContain('"peers"');
    }
    expect(await rules()).toBe(before);
    // The API's own names are fine, and its own Origin (the topology page) too.
    expect((await rawGet(port + 1, '/status', `localhost:${port + 1}`)).status).toBe(200);
    expect((await fetch(`${base}/status`, { headers: { origin: base } })).status).toBe(200);
  });

  it('answers bad requests with 4xx and a message, changing nothing', async () => {
    const before = await (await fetch(`${base}/status/targets`)).text();
    let res = await fetch(`${base}/connect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ peers: ['198.18.9.13', 'not an address'] }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(/invalid peer address "not an address"/);
    expect(await (await fetch(`${base}/status/targets`)).text()).toBe(before);
    res = await fetch(`${base}/connect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"peers": ',
    });
    expect(res.status).toBe(400);
    res = await fetch(`${base}/connect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ peers: 5 }),
    });
    expect(res.status).toBe(400);
    res = await fetch(`${base}/status/nope`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: string }).error).toMatch(/views: peers, connections, targets/);
    // Names of the views object's prototype are no views (the fuzz test found valueOf answering 500).
    for (const view of ['valueOf', 'constructor', 'toString', 'hasOwnProperty', '__proto__'])
      expect((await fetch(`${base}/status/${view}`)).status, view).toBe(404);
    res = await fetch(`${base}/no/such/thing`);
    expect(res.status).toBe(404);
  });

  it('creates, lists, shows and removes services; bad ones get 4xx and a reason, changing nothing', async () => {
    const post = (body: unknown) =>
      fetch(`${base}/services`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const error = async (res: Response) => ((await res.json()) as { error: string }).error;
    let res = await post({ name: 'web', group: 'web', check: 'tcp:80' });
    expect(res.status).toBe(200);
    const web = (await res.json()) as { vip: string; dnsName: string; check: { port: number } };
    expect(web.vip).toMatch(/^10\.96\./);
    expect(web.dnsName).toBe('web.weft.local');
    expect(web.check.port).toBe(80);
    expect(await error((res = await post({ name: 'web', group: 'other' })))).toMatch(/service web exists/);
    expect(res.status).toBe(409);
    for (const [body, why] of [
      [{ name: 'Bad_Name', group: 'web' }, /not a DNS label/],
      [{ name: 'x' }, /either --group GROUP or --backend/],
      [{ name: 'x', group: 'g', backends: ['netns:a'] }, /either --group GROUP or --backend/],
      [{ name: 'x', group: 'Not A Group' }, /not a group name/],
      [{ name: 'x', group: 'g', affinity: 'sticky' }, /--affinity is none or client/],
      [{ name: 'x', group: 'g', check: 'udp:53' }, /is not tcp:PORT/],
      [{ name: 'x', backends: [5] }, /body\/backends\/0 must be string/], // the schema names the field
    ] as [unknown, RegExp][]) {
      res = await post(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(await error(res)).toMatch(why);
    }
    const list = (await (await fetch(`${base}/services`)).json()) as {
      range: string;
      services: { name: string; vip: string; live: unknown[] }[];
    };
    expect(list.range).toBe('10.96.0.0/16');
    expect(list.services.map((s) => [s.name, s.vip, s.live.length])).toEqual([['web', web.vip, 0]]);
    expect(((await (await fetch(`${base}/services/web`)).json()) as { vip: string }).vip).toBe(web.vip);
    expect((await fetch(`${base}/services/nope`)).status).toBe(404);
    expect((await fetch(`${base}/services/web`, { method: 'DELETE' })).status).toBe(200);
    expect((await fetch(`${base}/services/web`, { method: 'DELETE' })).status).toBe(404);
  });
});

/** A GET with a Host header of our choosing (fetch does not let a caller set Host). */
function rawGet(port: number, path: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers: { host } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe("the API's schemas", () => {
  it("all compile (the router compiles each at its route's first request; here all at once)", async () => {
    // Sources the routes would call: none is called while the server gets ready.
    const stub: object = new Proxy(() => undefined, { get: (_t, k) => (k === 'then' ? undefined : stub) });
    const sources = {
      maker: stub,
      ipam: stub,
      datapath: stub,
      names: stub,
      dns: null,
      failures: stub,
      hasPassword: false,
      discovery: true,
      docker: null,
      policy: stub,
      services: stub,
      writes: stub,
      removePeer: stub,
      cni: stub,
      log: stub,
    } as unknown as ApiSources;
    const app = await buildApi(sources, { host: '127.0.0.1', port: 1 }, { eagerSchemas: true });
    await expect(app.ready()).resolves.toBeDefined();
    await app.close();
  });
});

describe('the API on a unix socket', () => {
  it('--http-addr unix:PATH: a socket only root may use, no TCP port; the CLI talks through it', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-api-'));
    const socket = join(dataDir, 'api.sock');
    const port = await freePorts(2);
    const router = await Router.start(
      routerOptions({ dataDir, port, nickname: 'sock', httpAddr: `unix:${socket}` }),
      silentLogger,
    );
    try {
      expect(statSync(socket).mode & 0o777).toBe(0o600);
      expect((await callRouter(`unix:${socket}`, 'GET', '/status', undefined, 5000)).text).toMatch(/Name: .*\(sock\)/);
      await expect(fetch(`http://127.0.0.1:${port + 1}/status`)).rejects.toThrow();
      const cli = await runCli(['status'], { WEFT_HTTP_ADDR: `unix:${socket}` });
      expect(cli.stdout).toMatch(/Name: .*\(sock\)/);
    } finally {
      await router.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
    expect(existsSync(socket)).toBe(false);
  });
});

describe('router start', () => {
  it('refuses a service range that overlaps the allocation range, saying so', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'weft-api-'));
    try {
      const port = await freePorts(2);
      await expect(
        Router.start(routerOptions({ dataDir, port, serviceRange: '10.40.0.0/16' }), silentLogger),
      ).rejects.toThrow(/--service-range 10.40.0.0\/16 overlaps the allocation range 10.32.0.0\/12/);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

function runCli(args: string[], env: NodeJS.ProcessEnv) {
  return run(process.execPath, [WEFT_CLI, ...args], { env: { ...process.env, ...env } });
}
