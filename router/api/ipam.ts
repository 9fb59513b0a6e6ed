// IPAM endpoints of the HTTP API. Allocation answers are "ip/prefix" text (as
// Weave's); waits are bounded (?timeout=seconds, else --ipalloc-timeout) and a
// request that gives up says why.
import type { FastifyInstance } from 'fastify';
import type { Allocator } from '../../ipam/allocator.js';
import { formatCidr, formatIp } from '../../net/addr.js';
import type { Addr6 } from '../../net/addr6.js';
import type { CidrOf, Position } from '../../net/family.js';
import type { ReportSources } from '../report.js';
import { invalid, notFound } from './errors.js';

const ident = { type: 'string', pattern: '^[A-Za-z0-9_.:-]{1,128}$' } as const;
const waitQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    timeout: { type: 'string', pattern: '^\\d{1,4}(\\.\\d+)?$' },
    subnet: { type: 'string', maxLength: 49 },
    // An IPv6 address from the default IPv6 subnet (a subnet given says its own family).
    family: { type: 'string', enum: ['4', '6'] },
  },
} as const;

type WaitQuery = { timeout?: string; subnet?: string; family?: '4' | '6' };

/** The two allocators; routes pick one by the family of the address or subnet they are given. */
export interface Allocators {
  v4: Allocator;
  v6?: Allocator<Addr6>;
}

/** Either allocator, typed for code that works on both. */
type AnyAllocator = Allocator<Position>;

function timeout(q: WaitQuery | undefined, ipam: AnyAllocator): number {
  if (q?.timeout === undefined) return ipam.config.timeoutMs;
  const n = Number(q.timeout);
  if (n > 3600) throw invalid('timeout must be seconds from 0 to 3600');
  return n * 1000;
}

function pick(ipam: Allocators, v6: boolean): AnyAllocator {
  if (!v6) return ipam.v4 as AnyAllocator;
  if (!ipam.v6) throw invalid('this router has no IPv6 allocator');
  return ipam.v6 as AnyAllocator;
}

function subnet(q: WaitQuery | undefined, ipam: AnyAllocator): CidrOf<Position> {
  if (!q?.subnet) return ipam.config.defaultSubnet;
  try {
    return ipam.family.parseCidr(q.subnet);
  } catch (err) {
    throw invalid((err as Error).message);
  }
}

function address(text: string, ipam: AnyAllocator): Position {
  try {
    return ipam.family.parseIp(text);
  } catch (err) {
    throw invalid((err as Error).message);
  }
}

export function registerIpamRoutes(
  app: FastifyInstance,
  ipam: Allocators,
  removePeer?: ReportSources['removePeer'],
  /** weft reset: what else this peer hands over as it leaves. */
  leave?: () => void,
): void {
  const both = (): AnyAllocator[] => [ipam.v4 as AnyAllocator, ...(ipam.v6 ? [ipam.v6 as AnyAllocator] : [])];
  app.post<{ Params: { id: string }; Querystring: WaitQuery }>(
    '/ip/:id',
    { schema: { params: { type: 'object', properties: { id: ident } }, querystring: waitQuery } },
    async (req, reply) => {
      const v6 = req.query.subnet ? req.query.subnet.includes(':') : req.query.family === '6';
      if (req.query.family !== undefined && (req.query.family === '6') !== v6)
        throw invalid(`family=${req.query.family} and subnet ${req.query.subnet} are not of one family`);
      const a = pick(ipam, v6);
      const r = await a.allocate(req.params.id, subnet(req.query, a), timeout(req.query, a));
      return reply.type('text/plain').send(`${a.family.formatIp(r.addr)}/${r.prefix}`);
    },
  );

  app.put<{ Params: { id: string; ip: string; prefix?: string }; Querystring: WaitQuery }>(
    '/ip/:id/:ip/:prefix?',
    {
      schema: {
        params: {
          type: 'object',
          properties: {
            id: ident,
            ip: { type: 'string', maxLength: 45 },
            prefix: { type: 'string', pattern: '^\\d{1,3}$' },
          },
        },
        querystring: waitQuery,
      },
    },
    async (req, reply) => {
      const a = pick(ipam, req.params.ip.includes(':'));
      const addr = address(req.params.ip, a);
      let net = a.config.defaultSubnet;
      if (req.params.prefix !== undefined) {
        const p = Number(req.params.prefix);
        if (p > a.family.bits) throw invalid(`invalid prefix length "${req.params.prefix}"`);
        net = a.family.parseCidr(`${req.params.ip}/${p}`, true);
      }
      const r = await a.claim(req.params.id, addr, net, timeout(req.query, a));
      return reply.type('text/plain').send(`${a.family.formatIp(r.addr)}/${r.prefix}`);
    },
  );

  app.get<{ Params: { id: string } }>(
    '/ip/:id',
    { schema: { params: { type: 'object', properties: { id: ident } } } },
    async (req, reply) => {
      // IPv4 first, then IPv6, each with its default subnet's prefix.
      const addrs = both().flatMap((a) =>
        a.lookup(req.params.id).map((x) => `${a.family.formatIp(x)}/${a.config.defaultSubnet.prefix}`),
      );
      if (addrs.length === 0) throw notFound(`no addresses for ${req.params.id}`);
      return reply.type('text/plain').send(addrs.join(' '));
    },
  );

  app.delete<{ Params: { id: string; ip?: string } }>(
    '/ip/:id/:ip?',
    { schema: { params: { type: 'object', properties: { id: ident, ip: { type: 'string', maxLength: 45 } } } } },
    async (req) => {
      const one = req.params.ip;
      if (one !== undefined) {
        const a = pick(ipam, one.includes(':'));
        return { freed: (await a.free(req.params.id, address(one, a))).map((x) => a.family.formatIp(x)) };
      }
      // Every address of the container, of both families: not found only when it has none at all.
      const holders = both().filter((a) => a.lookup(req.params.id).length > 0);
      if (holders.length === 0) return { freed: (await ipam.v4.free(req.params.id)).map(formatIp) }; // says why
      const freed: string[] = [];
      for (const a of holders) freed.push(...(await a.free(req.params.id)).map((x) => a.family.formatIp(x)));
      return { freed };
    },
  );

  app.get<{ Querystring: WaitQuery }>('/ring', { schema: { querystring: waitQuery } }, async (req) => {
    const a = pick(ipam, req.query.family === '6');
    await a.prime(timeout(req.query, a));
    const s = a.status();
    return { state: s.state, range: s.range, seeds: s.seeds, peers: s.peers };
  });

  app.delete<{ Params: { peer: string } }>(
    '/peer/:peer',
    { schema: { params: { type: 'object', properties: { peer: { type: 'string', minLength: 1, maxLength: 255 } } } } },
    async (req, reply) => {
      const r = removePeer
        ? await removePeer(req.params.peer)
        : { ...(await ipam.v4.rmpeer(req.params.peer)), removed: [] as string[] };
      return reply
        .type('text/plain')
        .send(
          `${r.addresses} addresses taken over from ${r.peer}${r.removed.length > 0 ? `; removed its ${r.removed.join(', ')}` : ''}\n`,
        );
    },
  );

  app.delete('/peer', async () => {
    const heir = ipam.v4.leave();
    const heir6 = ipam.v6?.leave() ?? null;
    leave?.();
    return { heir, range: formatCidr(ipam.v4.config.range), heir6 };
  });
}
