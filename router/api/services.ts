// Services over the HTTP API: create, list, show (backends with host, health and
// this host's flows to each), remove.
import type { FastifyInstance } from 'fastify';
import type { MeshView } from '../../mesh/index.js';
import type { DockerWatcher } from '../../plugin/docker-watcher.js';
import { endpointKey } from '../../plugin/docker-driver.js';
import type { ServiceEngine, ServiceRequest, ServiceView } from '../../services/engine.js';
import { SERVICE_NAME, ServiceError, parseCheck, vip6Of } from '../../services/service.js';
import { checkGroupName } from '../../policy/rules.js';
import { notFound } from './errors.js';

export interface ServiceDetail extends Omit<ServiceView, 'live'> {
  dnsName: string;
  live: (ServiceView['live'][number] & { host: string | null; flowsFromHere: number })[];
}

export function registerServiceRoutes(
  app: FastifyInstance,
  services: ServiceEngine,
  mesh: MeshView,
  docker: DockerWatcher | null,
): void {
  async function detail(v: ServiceView, flows: Map<string, Map<string, number>>): Promise<ServiceDetail> {
    const perBackend = flows.get(v.vip) ?? new Map<string, number>();
    const perBackend6 = (v.vip6 !== undefined ? flows.get(v.vip6) : undefined) ?? new Map<string, number>();
    return {
      ...v,
      dnsName: services.dnsName(v.name),
      live: v.live.map((b) => ({
        ...b,
        host: mesh.nicknameOf(b.peer) ?? null,
        flowsFromHere:
          (b.addr !== undefined ? (perBackend.get(b.addr) ?? 0) : 0) +
          (b.addr6 !== undefined ? (perBackend6.get(b.addr6) ?? 0) : 0),
      })),
    };
  }

  /**
   * Backends named by Docker name (or short id) on this host's engine are kept as weft names them: the
   * full id (weft attach), and the endpoint of each network of the container (the network plugin's).
   */
  async function withDockerIds(list: string[]): Promise<string[]> {
    const out: string[] = [];
    for (const ref of list) {
      if (ref.includes(':') || /^[0-9a-f]{64}$/.test(ref) || !docker?.status.connected) {
        out.push(ref);
        continue;
      }
      const c = await docker.api.find(ref).catch(() => null);
      if (!c) {
        out.push(ref);
        continue;
      }
      out.push(
        c.Id,
        ...Object.values(c.NetworkSettings.Networks ?? {})
          .filter((n) => n.EndpointID)
          .map((n) => endpointKey(n.EndpointID)),
      );
    }
    return [...new Set(out)].slice(0, 256);
  }

  app.get('/services', async () => {
    const flows = await services.flows();
    return { range: services.rangeText, services: await Promise.all(services.views().map((v) => detail(v, flows))) };
  });

  const nameParam = { type: 'object', properties: { name: { type: 'string', minLength: 1, maxLength: 63 } } } as const;

  app.get<{ Params: { name: string } }>('/services/:name', { schema: { params: nameParam } }, async (req) => {
    const v = services.views().find((x) => x.name === req.params.name);
    if (!v) throw notFound(`no service ${req.params.name} (weft service list shows them)`);
    return detail(v, await services.flows());
  });

  // What a service says is checked by the engine (services/service.ts: ServiceError); the schema shapes it.
  const serviceBody = {
    type: 'object',
    additionalProperties: false,
    required: ['name'],
    properties: {
      name: { type: 'string', maxLength: 100 },
      group: { type: 'string', maxLength: 100 },
      backends: { type: 'array', maxItems: 256, items: { type: 'string', minLength: 1, maxLength: 256 } },
      affinity: { type: 'string', maxLength: 20 },
      check: { type: 'string', maxLength: 40 },
    },
  } as const;

  app.post<{ Body: { name: string; group?: string; backends?: string[]; affinity?: string; check?: string } }>(
    '/services',
    { schema: { body: serviceBody } },
    async (req) => {
      const b = req.body;
      if (!SERVICE_NAME.test(b.name))
        throw new ServiceError(
          `service name "${b.name.slice(0, 80)}" is not a DNS label (lower-case letters, digits and -, up to 63)`,
        );
      const backends = b.backends ?? [];
      const group = b.group === undefined || b.group === '' ? undefined : b.group;
      if ((group === undefined) === (backends.length === 0))
        throw new ServiceError('give either --group GROUP or --backend CONTAINER (one or more), not both');
      if (group !== undefined) checkGroupName(group);
      const affinity = b.affinity ?? 'none';
      if (affinity !== 'none' && affinity !== 'client')
        throw new ServiceError(`--affinity is none or client, not "${affinity.slice(0, 40)}"`);
      const request: ServiceRequest = {
        name: b.name,
        ...(group !== undefined ? { group } : { backends: await withDockerIds(backends) }),
        affinity,
        ...(b.check !== undefined && b.check !== '' ? { check: parseCheck(b.check) } : {}),
      };
      const s = services.create(request);
      const vip6 = services.range6 ? vip6Of(s.vip, services.range, services.range6) : undefined;
      return { ...s, ...(vip6 !== undefined ? { vip6 } : {}), dnsName: services.dnsName(s.name) };
    },
  );

  app.delete<{ Params: { name: string } }>('/services/:name', { schema: { params: nameParam } }, async (req) => {
    const s = services.remove(req.params.name);
    if (!s) throw notFound(`no service ${req.params.name} (weft service list shows them)`);
    return s;
  });
}
