// The router's local HTTP API (default 127.0.0.1:6784, or a unix socket): what
// the CLI and the plugins talk to. Errors are JSON {"error": "..."} with a
// 4xx/5xx status. It is for local programs only: a web page in a browser on the
// host can reach 127.0.0.1 too, so bodies are JSON only (a cross-site form or
// text/plain post needs no preflight; JSON does), requests must name the API
// itself as Host (DNS rebinding names another), and a foreign Origin or a
// cross-site Sec-Fetch-Site is refused before any route runs.
import Fastify, { type FastifyInstance } from 'fastify';
import { buildReport, renderConnections, renderDns, renderIpam, renderPeers, renderStatus, renderTargets, type ReportSources } from '../report.js';
import { registerDnsRoutes } from './dns.js';
import { registerIpamRoutes } from './ipam.js';
import { registerDatapathRoutes } from './datapath.js';
import { registerUiRoutes } from '../ui.js';
import { registerPolicyRoutes } from './policy.js';
import { registerServiceRoutes } from './services.js';

import { HttpError } from './errors.js';
import { InvalidValue } from '../../net/validate.js';

const STATUS_VIEWS = {
  peers: renderPeers,
  connections: renderConnections,
  targets: renderTargets,
  ipam: renderIpam,
  dns: renderDns,
} as const;

/** Peer addresses from a JSON body {"peers": [...]} or query fields peer=...&peer=... */
function peerList(body: unknown, query: unknown): string[] {
  const pick = (v: unknown): string[] | null => {
    if (v === undefined || v === null) return null;
    if (typeof v === 'string') return [v];
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
    throw new HttpError(400, 'peers must be a list of addresses');
  };
  const b = (body ?? {}) as Record<string, unknown>;
  const q = (query ?? {}) as Record<string, unknown>;
  if (typeof b !== 'object') throw new HttpError(400, 'body must be a JSON object');
  return pick(b.peers) ?? pick(b.peer) ?? pick(q.peer) ?? pick(q.peers) ?? [];
}

function flag(body: unknown, query: unknown, name: string): boolean {
  const v = ((body ?? {}) as Record<string, unknown>)[name] ?? ((query ?? {}) as Record<string, unknown>)[name];
  return v === true || v === 'true' || v === '1';
}

/** Where the API listens: a TCP address, or a unix socket (no Host to check: no browser reaches it). */
export type ApiListen = { host: string; port: number } | { unix: string };

/** The Host names a request to the API may carry: its own address, and loopback by name. */
function allowedHosts(listen: ApiListen): Set<string> | null {
  if ('unix' in listen) return null;
  const own = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  const names = new Set([own, 'localhost', '127.0.0.1', '[::1]']);
  return new Set([...names].flatMap((h) => [`${h}:${listen.port}`, ...(listen.port === 80 ? [h] : [])]));
}

/** Why a request is refused as not from a local program (null: it is fine). */
export function foreignRequest(listen: ApiListen, headers: Record<string, string | string[] | undefined>): string | null {
  const hosts = allowedHosts(listen);
  const host = String(headers.host ?? '').toLowerCase();
  if (hosts && !hosts.has(host)) return `Host "${host.slice(0, 100)}" is not this API's address (a browser following DNS rebinding?)`;
  const origin = headers.origin;
  if (origin !== undefined) {
    const o = String(origin).toLowerCase();
    const own = hosts ? [...hosts].map((h) => `http://${h}`) : [];
    if (!own.includes(o)) return `Origin "${o.slice(0, 100)}" is not this API's own: the API is for local programs, not web pages`;
  }
  const site = headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return `a ${String(site).slice(0, 20)} request from a browser: the API is for local programs, not web pages`;
  return null;
}

export function buildApi(sources: ReportSources, listen: ApiListen): FastifyInstance {
  const { maker } = sources;
  const app = Fastify({ logger: false, bodyLimit: 1024 * 1024 });

  // JSON bodies only: no form or text/plain parser (those a page can post cross-site without asking).
  app.removeContentTypeParser(['text/plain']);
  app.addHook('onRequest', async (req, reply) => {
    const why = foreignRequest(listen, req.headers);
    if (why) return reply.code(403).send({ error: `refused: ${why}` });
  });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return reply.code(415).send({ error: 'the API takes JSON bodies only (content-type: application/json)' });
    const code = err instanceof InvalidValue ? 400 : err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    void reply.code(code).send({ error: err.message });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ error: `no such endpoint: ${req.method} ${req.url}` });
  });

  app.get('/status', async (_req, reply) => reply.type('text/plain; charset=utf-8').send(renderStatus(buildReport(sources))));
  app.get<{ Params: { view: string } }>('/status/:view', async (req, reply) => {
    const render = STATUS_VIEWS[req.params.view as keyof typeof STATUS_VIEWS];
    if (!render) throw new HttpError(404, `no status view "${req.params.view}"; views: ${Object.keys(STATUS_VIEWS).join(', ')}`);
    return reply.type('text/plain; charset=utf-8').send(render(buildReport(sources)));
  });
  app.get('/report', async () => buildReport(sources));
  app.get('/peers', async () => buildReport(sources).peers);

  app.post('/connect', async (req, reply) => {
    const peers = peerList(req.body, req.query);
    const replace = flag(req.body, req.query, 'replace');
    if (peers.length === 0 && !replace) throw new HttpError(400, 'no peer addresses given');
    try {
      maker.connect(peers, replace);
    } catch (err) {
      throw new HttpError(400, (err as Error).message);
    }
    return reply.code(200).send({ targets: maker.directTargets() });
  });

  app.post('/forget', async (req) => {
    const peers = peerList(req.body, req.query);
    if (peers.length === 0) throw new HttpError(400, 'no peer addresses given');
    try {
      return { forgotten: maker.forget(peers), targets: maker.directTargets() };
    } catch (err) {
      throw new HttpError(400, (err as Error).message);
    }
  });

  registerIpamRoutes(app, sources.ipam, sources.removePeer);
  registerDatapathRoutes(app, sources.datapath, sources.names, sources.docker ?? null, sources.policy ?? null);
  if (sources.policy) registerPolicyRoutes(app, sources.policy, sources.names, sources.docker ?? null, sources.dns?.config.domain ?? 'weft.local.');
  if (sources.services) registerServiceRoutes(app, sources.services, sources.mesh, sources.docker ?? null);
  registerDnsRoutes(app, sources);
  registerUiRoutes(app, sources);
  return app;
}
