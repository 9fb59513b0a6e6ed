// Containers and the host on the overlay, over the HTTP API: attach, detach,
// expose, hide, the fdb, and the datapath's removal for weft reset.
import type { FastifyInstance } from 'fastify';
import type { Datapath } from '../../datapath/datapath.js';
import { DOCKER_ID } from '../../datapath/attach.js';
import type { NameService } from '../../dns/table.js';
import { WeftError } from '../../lib/errors.js';
import { canonicalDnsName } from '../../net/validate.js';
import type { DockerWatcher } from '../../plugin/docker-watcher.js';
import type { PolicyEngine } from '../../policy/engine.js';
import { invalid, notFound } from './errors.js';

/** Containers weft names by a prefix; anything else is a Docker container's name or id. */
const WEFT_KINDS = /^(netns|pid|cni|dockerep):/;

const group = { type: 'string', pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' } as const;
// Either family's length (IPv6 without --ipv6 is refused with its reason by the datapath, not as too long).
const cidr = { type: 'string', maxLength: 49 } as const;

const attachBody = {
  type: 'object',
  additionalProperties: false,
  required: ['container'],
  properties: {
    /** netns:NAME, pid:N, cni:ID, or a Docker container's name or id. */
    container: { type: 'string', minLength: 1, maxLength: 256 },
    cidrs: { type: 'array', maxItems: 64, items: cidr },
    subnet: cidr,
    hostname: { type: 'string', maxLength: 254 },
    groups: { type: 'array', maxItems: 64, items: group },
    /** CNI: the namespace path and the interface name the runtime gave. */
    netns: { type: 'string', minLength: 1, maxLength: 4096 },
    ifname: { type: 'string', pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$' },
    /** The default route through this host (its address in the subnet, exposed), and hairpin on the port. */
    gateway: { type: 'boolean' },
    /** No IPv6 address, on a router that gives containers one of each family (--ipv6). */
    ipv4Only: { type: 'boolean' },
    /** No IPv4 address: an IPv6-only container (a router with --ipv6). */
    ipv6Only: { type: 'boolean' },
  },
  dependencies: { netns: ['ifname'], ifname: ['netns'] },
} as const;

interface AttachBody {
  container: string;
  cidrs?: string[];
  subnet?: string;
  hostname?: string;
  groups?: string[];
  netns?: string;
  ifname?: string;
  gateway?: boolean;
  ipv4Only?: boolean;
  ipv6Only?: boolean;
}

function need(dp: Datapath | null): Datapath {
  if (!dp)
    throw new WeftError(
      'unavailable',
      'this router runs without a datapath (--datapath none): nothing can be attached',
    );
  return dp;
}

export function registerDatapathRoutes(
  app: FastifyInstance,
  dp: Datapath | null,
  names: NameService,
  docker: DockerWatcher | null,
  policy: PolicyEngine | null,
): void {
  /** A container that joins groups some rule limits, on a host that cannot enforce the policy, is told so. */
  const withWarning = <T extends { groups?: string[] }>(ep: T): T & { warning?: string } => {
    const why = policy && ep.groups && ep.groups.length > 0 && policy.limits(ep.groups) ? policy.notEnforced() : [];
    return why.length > 0 ? { ...ep, warning: `security groups are NOT enforced on this host: ${why.join('; ')}` } : ep;
  };

  app.post<{ Body: AttachBody }>('/attach', { schema: { body: attachBody } }, async (req) => {
    const b = req.body;
    const hostname = b.hostname === undefined ? undefined : canonicalDnsName(b.hostname, 'hostname'); // a clear error before anything is attached
    const cidrs = b.cidrs ?? [];
    if (b.ipv4Only && b.ipv6Only) throw invalid('IPv4 only and IPv6 only: choose one');
    const only = b.ipv4Only ? 'ipv4' : b.ipv6Only ? 'ipv6' : undefined;
    const d = need(dp);
    const cni = b.netns !== undefined && b.ifname !== undefined ? { netns: b.netns, ifname: b.ifname } : undefined;
    if (!cni && !WEFT_KINDS.test(b.container)) {
      if (!docker)
        throw invalid(
          `unknown container "${b.container}": use netns:NAME, pid:N or cni:ID (this router follows no Docker engine: --docker-api "")`,
        );
      return withWarning(
        await docker.attach(await docker.resolve(b.container), cidrs, b.subnet, hostname, b.groups, b.gateway, only),
      );
    }
    const ep = await d.attach(b.container, cidrs, b.subnet, cni, b.groups, {
      gateway: b.gateway,
      only,
    });
    if (hostname)
      for (const c of [...ep.cidrs, ...(ep.cidrs6 ?? [])]) names.add(hostname, ep.container, c.split('/')[0]);
    return withWarning(ep);
  });

  app.delete<{ Params: { container: string } }>(
    '/attach/:container',
    {
      schema: {
        params: { type: 'object', properties: { container: { type: 'string', minLength: 1, maxLength: 256 } } },
      },
    },
    async (req) => {
      const d = need(dp);
      let container = req.params.container;
      if (docker && !WEFT_KINDS.test(container) && !DOCKER_ID.test(container)) {
        // A Docker name (or short id): its full id, even when it has stopped.
        const c = await docker.api.find(container);
        if (c) container = c.Id;
      }
      docker?.forgetAttached(container);
      if (!d.endpoints.local.some((e) => e.container === container)) {
        // Nothing attached; an address it may hold (an attach that failed half way) goes anyway.
        await d.freeAddresses(container);
        throw notFound(`container ${container} is not attached here`);
      }
      return d.detach(container);
    },
  );

  app.get('/fdb', async () => need(dp).fdb());

  app.post<{ Body: { cidr?: string } }>(
    '/expose',
    { schema: { body: { type: 'object', additionalProperties: false, properties: { cidr } } } },
    async (req) => {
      const d = need(dp);
      return { exposed: await d.expose(req.body?.cidr) };
    },
  );

  app.delete<{ Querystring: { cidr?: string } }>(
    '/expose',
    { schema: { querystring: { type: 'object', additionalProperties: false, properties: { cidr } } } },
    async (req) => {
      const d = need(dp);
      return { hidden: await d.hide(req.query.cidr) };
    },
  );

  /** For weft reset: removes the bridge, the VXLAN device and the firewall tables. */
  app.post('/datapath/remove', async () => {
    const { Datapath } = await import('../../datapath/datapath.js');
    const d = need(dp);
    d.stop();
    const ovsBridges = await Datapath.remove(d.config.ovs?.ovsdb);
    return { removed: true, ovsBridges };
  });
}
