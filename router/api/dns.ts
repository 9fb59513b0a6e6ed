// DNS endpoints: register, remove and look up names.
import type { FastifyInstance } from 'fastify';
import { normaliseName } from '../../dns/table.js';
import { formatIp } from '../../net/addr.js';
import { canonicalDnsName, canonicalIpv4 } from '../../net/validate.js';
import { HttpError } from './errors.js';
import type { ReportSources } from '../report.js';

export function registerDnsRoutes(app: FastifyInstance, s: ReportSources): void {
  const inDomain = (fqdn: string) => {
    const d = normaliseName(s.dns?.config.domain ?? 'weft.local.');
    const n = normaliseName(fqdn);
    return n === d || n.endsWith(`.${d}`);
  };

  /** Register: body {"fqdn": "web.weft.local", "ips": [...]}; without ips, the container's weft addresses. */
  app.put<{ Params: { container: string } }>('/name/:container', async (req) => {
    const b = (req.body ?? {}) as { fqdn?: unknown; ips?: unknown };
    const fqdn = canonicalDnsName(b.fqdn, 'fqdn');
    if (!inDomain(fqdn)) throw new HttpError(400, `${fqdn} is not in the weft domain ${s.dns?.config.domain ?? 'weft.local.'}`);
    const given = b.ips === undefined ? [] : b.ips;
    if (!Array.isArray(given) || given.length > 64) throw new HttpError(400, 'ips must be a list of IPv4 addresses');
    const ips: string[] = given.length > 0 ? given.map((i) => canonicalIpv4(i, 'ips')) : s.ipam.lookup(req.params.container).map(formatIp);
    if (ips.length === 0) throw new HttpError(404, `container ${req.params.container} has no weft address; give the addresses`);
    for (const ip of ips) s.names.add(fqdn, req.params.container, ip);
    return { fqdn, ips };
  });

  app.delete<{ Params: { container: string }; Querystring: { fqdn?: string; ip?: string } }>('/name/:container', async (req) => {
    const removed = s.names.remove({ container: req.params.container, hostname: req.query.fqdn, ip: req.query.ip });
    if (removed === 0) throw new HttpError(404, `no names registered here for ${req.params.container}`);
    return { removed };
  });

  app.get<{ Params: { fqdn: string } }>('/name/:fqdn', async (req) => {
    const ips = s.names.table.lookup(req.params.fqdn);
    if (ips.length === 0) throw new HttpError(404, `${req.params.fqdn}: no such name`);
    return { fqdn: normaliseName(req.params.fqdn), ips };
  });

  app.get('/name', async () => s.names.table.all());
}
