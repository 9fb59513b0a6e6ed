// DNS endpoints: register, remove and look up names.
import type { FastifyInstance } from 'fastify';
import { normaliseName } from '../../dns/table.js';
import { formatIp } from '../../net/addr.js';
import { canonicalDnsName, canonicalIp } from '../../net/validate.js';
import type { ReportSources } from '../report.js';
import { invalid, notFound } from './errors.js';

const containerParam = {
  type: 'object',
  properties: { container: { type: 'string', minLength: 1, maxLength: 256 } },
} as const;

export function registerDnsRoutes(app: FastifyInstance, s: ReportSources): void {
  const domain = s.dns?.config.domain ?? 'weft.local.';
  const inDomain = (fqdn: string) => {
    const d = normaliseName(domain);
    return fqdn === d || fqdn.endsWith(`.${d}`);
  };

  /** Register: body {"fqdn": "web.weft.local", "ips": [...]}; without ips, the container's weft addresses. */
  app.put<{ Params: { container: string }; Body: { fqdn: string; ips?: string[] } }>(
    '/name/:container',
    {
      schema: {
        params: containerParam,
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['fqdn'],
          properties: {
            fqdn: { type: 'string', maxLength: 254 },
            ips: { type: 'array', maxItems: 64, items: { type: 'string', maxLength: 45 } },
          },
        },
      },
    },
    async (req) => {
      const fqdn = canonicalDnsName(req.body.fqdn, 'fqdn');
      if (!inDomain(fqdn)) throw invalid(`${fqdn} is not in the weft domain ${domain}`);
      const given = req.body.ips ?? [];
      // Given, of either family; else the container's IPv4 weft addresses: the overlay carries no IPv6
      // to containers yet, and an AAAA answer would send a client's traffic elsewhere.
      const ips =
        given.length > 0 ? given.map((i) => canonicalIp(i, 'ips')) : s.ipam.lookup(req.params.container).map(formatIp);
      if (ips.length === 0) throw notFound(`container ${req.params.container} has no weft address; give the addresses`);
      for (const ip of ips) s.names.add(fqdn, req.params.container, ip);
      return { fqdn, ips };
    },
  );

  app.delete<{ Params: { container: string }; Querystring: { fqdn?: string; ip?: string } }>(
    '/name/:container',
    {
      schema: {
        params: containerParam,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { fqdn: { type: 'string', maxLength: 254 }, ip: { type: 'string', maxLength: 45 } },
        },
      },
    },
    async (req) => {
      const removed = s.names.remove({ container: req.params.container, hostname: req.query.fqdn, ip: req.query.ip });
      if (removed === 0) throw notFound(`no names registered here for ${req.params.container}`);
      return { removed };
    },
  );

  app.get<{ Params: { fqdn: string } }>(
    '/name/:fqdn',
    { schema: { params: { type: 'object', properties: { fqdn: { type: 'string', minLength: 1, maxLength: 254 } } } } },
    async (req) => {
      const ips = s.names.table.lookup(req.params.fqdn);
      if (ips.length === 0) throw notFound(`${req.params.fqdn}: no such name`);
      return { fqdn: normaliseName(req.params.fqdn), ips };
    },
  );

  app.get('/name', async () => s.names.table.all());
}
