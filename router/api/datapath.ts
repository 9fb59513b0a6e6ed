// Attach, detach and ps over the HTTP API.
import type { FastifyInstance } from 'fastify';
import type { Datapath } from '../../datapath/datapath.js';
import { IpamError } from '../../ipam/allocator.js';
import { canonicalDnsName, GROUP_NAME } from '../../net/validate.js';
import { HttpError } from './errors.js';
import type { PolicyEngine } from '../../policy/engine.js';
import type { NameService } from '../../dns/table.js';
import type { DockerWatcher } from '../../plugin/docker-watcher.js';
import { DOCKER_ID } from '../../datapath/attach.js';

/** Containers weft names by a prefix; anything else is a Docker container's name or id. */
const WEFT_KINDS = /^(netns|pid|cni|dockerep):/;

function need(dp: Datapath | null): Datapath {
  if (!dp) throw new HttpError(409, 'this router runs without a datapath (--datapath none): nothing can be attached');
  return dp;
}

async function wrap<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof HttpError) throw err;
    if (err instanceof IpamError) throw new HttpError(err.code === 'pending' || err.code === 'full' ? 503 : err.code === 'conflict' ? 409 : 400, err.message);
    throw new HttpError(400, (err as Error).message);
  }
}

export function registerDatapathRoutes(app: FastifyInstance, dp: Datapath | null, names: NameService, docker: DockerWatcher | null, policy: PolicyEngine | null): void {
  /** A container that joins groups some rule limits, on a host that cannot enforce the policy, is told so. */
  const withWarning = <T extends { groups?: string[] }>(ep: T): T & { warning?: string } => {
    const why = policy && ep.groups && ep.groups.length > 0 && policy.limits(ep.groups) ? policy.notEnforced() : [];
    return why.length > 0 ? { ...ep, warning: `security groups are NOT enforced on this host: ${why.join('; ')}` } : ep;
  };
  app.post('/attach', async (req) => {
    const b = (req.body ?? {}) as { container?: unknown; cidrs?: unknown; subnet?: unknown; hostname?: unknown; netns?: unknown; ifname?: unknown; groups?: unknown };
    let groups: string[] | undefined;
    if (b.groups !== undefined) {
      if (!Array.isArray(b.groups) || b.groups.length > 64 || !b.groups.every((g) => typeof g === 'string' && GROUP_NAME.test(g))) {
        throw new HttpError(400, 'groups must be a list of group names (lower-case letters, digits, _ . -; up to 63)');
      }
      groups = b.groups as string[];
    }
    let cni: { netns: string; ifname: string } | undefined;
    if (b.netns !== undefined || b.ifname !== undefined) {
      if (typeof b.netns !== 'string' || typeof b.ifname !== 'string' || !/^[A-Za-z0-9_.-]{1,15}$/.test(b.ifname)) throw new HttpError(400, 'netns must be a path and ifname an interface name (up to 15 letters, digits, _ . -)');
      cni = { netns: b.netns, ifname: b.ifname };
    }
    if (b.hostname !== undefined) canonicalDnsName(b.hostname, 'hostname'); // a clear error before anything is attached
    if (typeof b.container !== 'string' || b.container === '') throw new HttpError(400, 'container is required (netns:NAME or pid:N)');
    const cidrs = b.cidrs === undefined ? [] : b.cidrs;
    if (!Array.isArray(cidrs) || !cidrs.every((c) => typeof c === 'string')) throw new HttpError(400, 'cidrs must be a list of ip/prefix');
    if (b.subnet !== undefined && typeof b.subnet !== 'string') throw new HttpError(400, 'subnet must be a CIDR');
    const d = need(dp);
    if (!cni && !WEFT_KINDS.test(b.container)) {
      if (!docker) throw new HttpError(400, `unknown container "${b.container}": use netns:NAME, pid:N or cni:ID (this router follows no Docker engine: --docker-api "")`);
      const name = b.container;
      return withWarning(await wrap(async () => docker.attach(await docker.resolve(name), cidrs as string[], b.subnet as string | undefined, b.hostname as string | undefined, groups)));
    }
    const ep = await wrap(() => d.attach(b.container as string, cidrs as string[], b.subnet as string | undefined, cni, groups));
    if (typeof b.hostname === 'string') for (const c of ep.cidrs) names.add(b.hostname, ep.container, c.split('/')[0]);
    return withWarning(ep);
  });

  app.delete<{ Params: { container: string } }>('/attach/:container', async (req) => {
    const d = need(dp);
    let container = req.params.container;
    if (docker && !WEFT_KINDS.test(container) && !DOCKER_ID.test(container)) {
      // A Docker name (or short id): its full id, even when it has stopped.
      const c = await wrap(() => docker.api.find(container));
      if (c) container = c.Id;
    }
    docker?.forgetAttached(container);
    if (!d.endpoints.local.some((e) => e.container === container)) {
      // Nothing attached; an address it may hold (an attach that failed half way) goes anyway.
      await d.freeAddresses(container);
      throw new HttpError(404, `container ${container} is not attached here`);
    }
    return wrap(() => d.detach(container));
  });

  app.get('/fdb', async () => wrap(() => need(dp).fdb()));

  app.post('/expose', async (req) => {
    const b = (req.body ?? {}) as { cidr?: unknown };
    if (b.cidr !== undefined && typeof b.cidr !== 'string') throw new HttpError(400, 'cidr must be ip/prefix');
    const d = need(dp);
    return { exposed: await wrap(() => d.expose(b.cidr as string | undefined)) };
  });

  app.delete('/expose', async (req) => {
    const cidr = ((req.query ?? {}) as { cidr?: string }).cidr;
    const d = need(dp);
    return { hidden: await wrap(() => d.hide(cidr)) };
  });

  /** For weft reset: removes the bridge, the VXLAN device and the firewall table. */
  app.post('/datapath/remove', async () => {
    const { Datapath } = await import('../../datapath/datapath.js');
    const d = need(dp);
    d.stop();
    const ovsBridges = await wrap(() => Datapath.remove(d.config.ovs?.ovsdb));
    return { removed: true, ovsBridges };
  });
}
