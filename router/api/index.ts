// The router's local HTTP API (default 127.0.0.1:6784, or a unix socket): what
// the CLI and the plugins talk to, every endpoint in docs/http-api.md. Each route
// says what it takes as a JSON schema, which Fastify checks before the route
// runs; errors are JSON {"error": "..."} with the status errors.ts gives. It is
// for local programs only: a web page in a browser on the host can reach
// 127.0.0.1 too, so bodies are JSON only (a cross-site form or text/plain post
// needs no preflight; JSON does), requests must name the API itself as Host (DNS
// rebinding names another), and a foreign Origin or a cross-site Sec-Fetch-Site
// is refused before any route runs.
import Fastify, { type FastifyInstance } from 'fastify';
import { lazySerializerBuilder, lazyValidatorBuilder } from './lazy-validation.js';
import type { Logger } from '../../lib/logger.js';
import { buildReport, type ReportSources } from '../report.js';
import { renderConnections, renderDns, renderIpam, renderPeers, renderStatus, renderTargets } from '../render.js';
import { registerUiRoutes } from '../ui.js';
import type { CniService } from '../../plugin/cni.js';
import { registerCniRoutes } from './cni.js';
import { registerDatapathRoutes } from './datapath.js';
import { registerDnsRoutes } from './dns.js';
import { errorHandler, invalid, notFound } from './errors.js';
import { registerIpamRoutes } from './ipam.js';
import { registerPolicyRoutes } from './policy.js';
import { registerServiceRoutes } from './services.js';

const STATUS_VIEWS = {
  peers: renderPeers,
  connections: renderConnections,
  targets: renderTargets,
  ipam: renderIpam,
  dns: renderDns,
} as const;

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
function foreignRequest(listen: ApiListen, headers: Record<string, string | string[] | undefined>): string | null {
  const hosts = allowedHosts(listen);
  const host = String(headers.host ?? '').toLowerCase();
  if (hosts && !hosts.has(host))
    return `Host "${host.slice(0, 100)}" is not this API's address (a browser following DNS rebinding?)`;
  const origin = headers.origin;
  if (origin !== undefined) {
    const o = String(origin).toLowerCase();
    const own = hosts ? [...hosts].map((h) => `http://${h}`) : [];
    if (!own.includes(o))
      return `Origin "${o.slice(0, 100)}" is not this API's own: the API is for local programs, not web pages`;
  }
  const site = headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none')
    return `a ${String(site).slice(0, 20)} request from a browser: the API is for local programs, not web pages`;
  return null;
}

export interface ApiSources extends ReportSources {
  log: Logger;
  /** The CNI plugin's work (POST /cni). */
  cni?: CniService;
}

const peersBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    peers: { type: 'array', maxItems: 1000, items: { type: 'string', minLength: 1, maxLength: 300 } },
    replace: { type: 'boolean' },
  },
} as const;

/**
 * The API server, its routes registered (it listens when the caller says). `inTurns`: a turn of the
 * event loop between groups of routes, so that what else the router starts meanwhile (the
 * datapath's commands, each a wait on a process) goes on between them (bench/README.md, bench/startup).
 */
export async function buildApi(
  sources: ApiSources,
  listen: ApiListen,
  /** eagerSchemas: compile every schema when the server gets ready (tests), not at each route's first request. */
  opts: { eagerSchemas?: boolean; inTurns?: boolean } = {},
): Promise<FastifyInstance> {
  const { maker } = sources;
  const turn = opts.inTurns ? () => new Promise((resolve) => setImmediate(resolve)) : async () => undefined;
  // Schemas are checked as written: nothing is dropped or converted quietly.
  const app = Fastify({
    logger: false,
    bodyLimit: 1024 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    ...(opts.eagerSchemas
      ? {}
      : {
          schemaController: {
            compilersFactory: { buildValidator: lazyValidatorBuilder, buildSerializer: lazySerializerBuilder },
          },
        }),
  });

  // JSON bodies only: no form or text/plain parser (those a page can post cross-site without asking).
  app.removeContentTypeParser(['text/plain']);
  app.addHook('onRequest', async (req, reply) => {
    const why = foreignRequest(listen, req.headers);
    if (why) return reply.code(403).send({ error: `refused: ${why}` });
  });
  app.setErrorHandler(errorHandler(sources.log));
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ error: `no such endpoint: ${req.method} ${req.url}` });
  });

  app.get('/status', async (_req, reply) =>
    reply.type('text/plain; charset=utf-8').send(renderStatus(buildReport(sources))),
  );
  app.get<{ Params: { view: string } }>('/status/:view', async (req, reply) => {
    // Own keys only: "valueOf", "constructor" ... are the object's prototype's, not views.
    const render = Object.hasOwn(STATUS_VIEWS, req.params.view)
      ? STATUS_VIEWS[req.params.view as keyof typeof STATUS_VIEWS]
      : undefined;
    if (!render) throw notFound(`no status view "${req.params.view}"; views: ${Object.keys(STATUS_VIEWS).join(', ')}`);
    return reply.type('text/plain; charset=utf-8').send(render(buildReport(sources)));
  });
  app.get('/report', async () => buildReport(sources));
  app.get('/peers', async () => buildReport(sources).peers);
  await turn();

  app.post<{ Body: { peers?: string[]; replace?: boolean } }>(
    '/connect',
    { schema: { body: peersBody } },
    async (req) => {
      const peers = req.body?.peers ?? [];
      const replace = req.body?.replace === true;
      if (peers.length === 0 && !replace) throw invalid('no peer addresses given');
      try {
        maker.connect(peers, replace);
      } catch (err) {
        throw invalid((err as Error).message);
      }
      return { targets: maker.directTargets() };
    },
  );

  app.post<{ Body: { peers?: string[] } }>('/forget', { schema: { body: peersBody } }, async (req) => {
    const peers = req.body?.peers ?? [];
    if (peers.length === 0) throw invalid('no peer addresses given');
    try {
      return { forgotten: maker.forget(peers), targets: maker.directTargets() };
    } catch (err) {
      throw invalid((err as Error).message);
    }
  });

  registerIpamRoutes(
    app,
    { v4: sources.ipam, ...(sources.ipam6 ? { v6: sources.ipam6 } : {}) },
    sources.removePeer,
    () => {
      // Leaving for good: the others stop waiting for this peer before they forget removed rules and services.
      sources.policy?.table.leaveMesh();
      sources.services?.table.leaveMesh();
      // What was handed over goes out now, not after the gossip delay: the router stops soon after,
      // and an update still waiting then would be lost (the ranges stranded under a gone peer's name).
      sources.mesh.flushNow();
    },
  );
  await turn();
  registerDatapathRoutes(app, sources.datapath, sources.names, sources.docker ?? null, sources.policy ?? null);
  if (sources.cni) registerCniRoutes(app, sources.cni);
  await turn();
  if (sources.policy)
    registerPolicyRoutes(
      app,
      sources.policy,
      sources.names,
      sources.docker ?? null,
      sources.dns?.config.domain ?? 'weft.local.',
    );
  await turn();
  if (sources.services) registerServiceRoutes(app, sources.services, sources.mesh, sources.docker ?? null);
  registerDnsRoutes(app, sources);
  await turn();
  registerUiRoutes(app, sources);
  return app;
}
