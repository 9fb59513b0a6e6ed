// The router's local HTTP API (default 127.0.0.1:6784): what the CLI and, later,
// the plugins talk to. Errors are JSON {"error": "..."} with a 4xx/5xx status.
import Fastify, { type FastifyInstance } from 'fastify';
import { buildReport, renderConnections, renderDns, renderIpam, renderPeers, renderStatus, renderTargets, type ReportSources } from './report.js';
import { registerDnsRoutes } from './api-dns.js';
import { registerIpamRoutes } from './api-ipam.js';
import { registerDatapathRoutes } from './api-datapath.js';
import { registerUiRoutes } from './ui.js';
import { registerPolicyRoutes } from './api-policy.js';
import { registerServiceRoutes } from './api-services.js';

import { HttpError } from './http-error.js';

const STATUS_VIEWS = {
  peers: renderPeers,
  connections: renderConnections,
  targets: renderTargets,
  ipam: renderIpam,
  dns: renderDns,
} as const;

/** Peer addresses from a JSON body {"peers": [...]} or form/query fields peer=...&peer=... */
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

export function buildApi(sources: ReportSources): FastifyInstance {
  const { maker } = sources;
  const app = Fastify({ logger: false, bodyLimit: 1024 * 1024 });

  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    const params = new URLSearchParams(body as string);
    const out: Record<string, string | string[]> = {};
    for (const k of new Set(params.keys())) {
      const all = params.getAll(k);
      out[k] = all.length === 1 ? all[0] : all;
    }
    done(null, out);
  });

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    const code = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
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

  registerIpamRoutes(app, sources.ipam);
  registerDatapathRoutes(app, sources.datapath, sources.names, sources.docker ?? null);
  if (sources.policy) registerPolicyRoutes(app, sources.policy, sources.names, sources.docker ?? null, sources.dns?.config.domain ?? 'weft.local.');
  if (sources.services) registerServiceRoutes(app, sources.services, sources.mesh, sources.docker ?? null);
  registerDnsRoutes(app, sources);
  registerUiRoutes(app, sources);
  return app;
}
