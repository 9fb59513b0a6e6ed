// IPAM endpoints of the HTTP API. Allocation answers are "ip/prefix" text (as
// Weave's); waits are bounded (?timeout=seconds, else --ipalloc-timeout) and a
// request that gives up says why.
import type { FastifyInstance } from 'fastify';
import { formatCidr, formatIp, parseCidr, parseIp, type Cidr } from '../../net/addr.js';
import { IpamError, type Allocator } from '../../ipam/allocator.js';
import { HttpError } from './errors.js';
import type { ReportSources } from '../report.js';

const STATUS: Record<IpamError['code'], number> = { pending: 503, full: 503, conflict: 409, 'not-found': 404, invalid: 400, refused: 403 };

function ipamCall<T>(fn: () => Promise<T>): Promise<T> {
  let p: Promise<T>;
  try {
    p = fn();
  } catch (err) {
    p = Promise.reject(err);
  }
  return p.catch((err: Error) => {
    if (err instanceof IpamError) throw new HttpError(STATUS[err.code], err.message);
    if (err instanceof HttpError) throw err;
    throw new HttpError(400, err.message);
  });
}

function ident(v: string): string {
  if (!/^[A-Za-z0-9_.:-]{1,128}$/.test(v)) throw new HttpError(400, `invalid container id "${v}"`);
  return v;
}

function field(req: { body?: unknown; query?: unknown }, name: string): string | undefined {
  const b = (req.body ?? {}) as Record<string, unknown>;
  const q = (req.query ?? {}) as Record<string, unknown>;
  const v = b[name] ?? q[name];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function timeout(req: { body?: unknown; query?: unknown }, ipam: Allocator): number {
  const t = field(req, 'timeout');
  if (t === undefined) return ipam.config.timeoutMs;
  const n = Number(t);
  if (!Number.isFinite(n) || n < 0 || n > 3600) throw new HttpError(400, 'timeout must be seconds from 0 to 3600');
  return n * 1000;
}

function subnet(req: { body?: unknown; query?: unknown }, ipam: Allocator): Cidr {
  const s = field(req, 'subnet');
  if (!s) return ipam.config.defaultSubnet;
  try {
    return parseCidr(s);
  } catch (err) {
    throw new HttpError(400, (err as Error).message);
  }
}

export function registerIpamRoutes(app: FastifyInstance, ipam: Allocator, removePeer?: ReportSources['removePeer']): void {
  app.post<{ Params: { id: string } }>('/ip/:id', async (req, reply) => {
    const r = await ipamCall(() => ipam.allocate(ident(req.params.id), subnet(req, ipam), timeout(req, ipam)));
    return reply.type('text/plain').send(`${formatIp(r.addr)}/${r.prefix}`);
  });

  app.put<{ Params: { id: string; ip: string; prefix?: string } }>('/ip/:id/:ip/:prefix?', async (req, reply) => {
    let addr: number;
    try {
      addr = parseIp(req.params.ip);
    } catch (err) {
      throw new HttpError(400, (err as Error).message);
    }
    let net: Cidr = ipam.config.defaultSubnet;
    if (req.params.prefix !== undefined) {
      const p = Number(req.params.prefix);
      if (!Number.isInteger(p) || p < 0 || p > 32) throw new HttpError(400, `invalid prefix length "${req.params.prefix}"`);
      net = parseCidr(`${req.params.ip}/${p}`, true);
    }
    const r = await ipamCall(() => ipam.claim(ident(req.params.id), addr, net, timeout(req, ipam)));
    return reply.type('text/plain').send(`${formatIp(r.addr)}/${r.prefix}`);
  });

  app.get<{ Params: { id: string } }>('/ip/:id', async (req, reply) => {
    const addrs = ipam.lookup(ident(req.params.id));
    if (addrs.length === 0) throw new HttpError(404, `no addresses for ${req.params.id}`);
    const prefix = ipam.config.defaultSubnet.prefix;
    return reply.type('text/plain').send(addrs.map((a) => `${formatIp(a)}/${prefix}`).join(' '));
  });

  app.delete<{ Params: { id: string; ip?: string } }>('/ip/:id/:ip?', async (req) => {
    let addr: number | undefined;
    if (req.params.ip !== undefined) {
      try {
        addr = parseIp(req.params.ip);
      } catch (err) {
        throw new HttpError(400, (err as Error).message);
      }
    }
    const freed = await ipamCall(() => ipam.free(ident(req.params.id), addr));
    return { freed: freed.map(formatIp) };
  });

  app.get('/ring', async (req) => {
    await ipamCall(() => ipam.prime(timeout(req, ipam)));
    const s = ipam.status();
    return { state: s.state, range: s.range, seeds: s.seeds, peers: s.peers };
  });

  app.delete<{ Params: { peer: string } }>('/peer/:peer', async (req, reply) => {
    const r = await ipamCall(() => (removePeer ? removePeer(req.params.peer) : ipam.rmpeer(req.params.peer).then((x) => ({ ...x, removed: [] as string[] }))));
    return reply.type('text/plain').send(`${r.addresses} addresses taken over from ${r.peer}${r.removed.length > 0 ? `; removed its ${r.removed.join(', ')}` : ''}\n`);
  });

  app.delete('/peer', async () => {
    const heir = ipam.leave();
    return { heir, range: formatCidr(ipam.config.range) };
  });
}
