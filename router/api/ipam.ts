// IPAM endpoints of the HTTP API. Allocation answers are "ip/prefix" text (as
// Weave's); waits are bounded (?timeout=seconds, else --ipalloc-timeout) and a
// request that gives up says why.
import type { FastifyInstance } from 'fastify';
import type { Allocator } from '../../ipam/allocator.js';
import { formatCidr, formatIp, parseCidr, parseIp, type Cidr } from '../../net/addr.js';
import type { ReportSources } from '../report.js';
import { invalid, notFound } from './errors.js';

const ident = { type: 'string', pattern: '^[A-Za-z0-9_.:-]{1,128}$' } as const;
const waitQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    timeout: { type: 'string', pattern: '^\\d{1,4}(\\.\\d+)?$' },
    subnet: { type: 'string', maxLength: 18 },
  },
} as const;

type WaitQuery = { timeout?: string; subnet?: string };

function timeout(q: WaitQuery | undefined, ipam: Allocator): number {
  if (q?.timeout === undefined) return ipam.config.timeoutMs;
  const n = Number(q.timeout);
  if (n > 3600) throw invalid('timeout must be seconds from 0 to 3600');
  return n * 1000;
}

function subnet(q: WaitQuery | undefined, ipam: Allocator): Cidr {
  if (!q?.subnet) return ipam.config.defaultSubnet;
  try {
    return parseCidr(q.subnet);
  } catch (err) {
    throw invalid((err as Error).message);
  }
}

function address(text: string): number {
  try {
    return parseIp(text);
  } catch (err) {
    throw invalid((err as Error).message);
  }
}

export function registerIpamRoutes(
  app: FastifyInstance,
  ipam: Allocator,
  removePeer?: ReportSources['removePeer'],
): void {
  app.post<{ Params: { id: string }; Querystring: WaitQuery }>(
    '/ip/:id',
    { schema: { params: { type: 'object', properties: { id: ident } }, querystring: waitQuery } },
    async (req, reply) => {
      const r = await ipam.allocate(req.params.id, subnet(req.query, ipam), timeout(req.query, ipam));
      return reply.type('text/plain').send(`${formatIp(r.addr)}/${r.prefix}`);
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
            ip: { type: 'string', maxLength: 15 },
            prefix: { type: 'string', pattern: '^\\d{1,2}$' },
          },
        },
        querystring: waitQuery,
      },
    },
    async (req, reply) => {
      const addr = address(req.params.ip);
      let net: Cidr = ipam.config.defaultSubnet;
      if (req.params.prefix !== undefined) {
        const p = Number(req.params.prefix);
        if (p > 32) throw invalid(`invalid prefix length "${req.params.prefix}"`);
        net = parseCidr(`${req.params.ip}/${p}`, true);
      }
      const r = await ipam.claim(req.params.id, addr, net, timeout(req.query, ipam));
      return reply.type('text/plain').send(`${formatIp(r.addr)}/${r.prefix}`);
    },
  );

  app.get<{ Params: { id: string } }>(
    '/ip/:id',
    { schema: { params: { type: 'object', properties: { id: ident } } } },
    async (req, reply) => {
      const addrs = ipam.lookup(req.params.id);
      if (addrs.length === 0) throw notFound(`no addresses for ${req.params.id}`);
      const prefix = ipam.config.defaultSubnet.prefix;
      return reply.type('text/plain').send(addrs.map((a) => `${formatIp(a)}/${prefix}`).join(' '));
    },
  );

  app.delete<{ Params: { id: string; ip?: string } }>(
    '/ip/:id/:ip?',
    { schema: { params: { type: 'object', properties: { id: ident, ip: { type: 'string', maxLength: 15 } } } } },
    async (req) => {
      const addr = req.params.ip === undefined ? undefined : address(req.params.ip);
      const freed = await ipam.free(req.params.id, addr);
      return { freed: freed.map(formatIp) };
    },
  );

  app.get<{ Querystring: WaitQuery }>('/ring', { schema: { querystring: waitQuery } }, async (req) => {
    await ipam.prime(timeout(req.query, ipam));
    const s = ipam.status();
    return { state: s.state, range: s.range, seeds: s.seeds, peers: s.peers };
  });

  app.delete<{ Params: { peer: string } }>(
    '/peer/:peer',
    { schema: { params: { type: 'object', properties: { peer: { type: 'string', minLength: 1, maxLength: 255 } } } } },
    async (req, reply) => {
      const r = removePeer
        ? await removePeer(req.params.peer)
        : { ...(await ipam.rmpeer(req.params.peer)), removed: [] as string[] };
      return reply
        .type('text/plain')
        .send(
          `${r.addresses} addresses taken over from ${r.peer}${r.removed.length > 0 ? `; removed its ${r.removed.join(', ')}` : ''}\n`,
        );
    },
  );

  app.delete('/peer', async () => {
    const heir = ipam.leave();
    return { heir, range: formatCidr(ipam.config.range) };
  });
}
