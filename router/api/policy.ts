// Security groups over the HTTP API: rules (list, allow, remove), the check of a
// flow against the compiled model, and the counters.
import type { FastifyInstance } from 'fastify';
import type { NameService } from '../../dns/table.js';
import type { DockerWatcher } from '../../plugin/docker-watcher.js';
import { containerMatches } from '../../policy/model.js';
import type { PolicyEngine } from '../../policy/engine.js';
import { PolicyTable } from '../../policy/table.js';
import { describeRule, parseProto, ruleFromRequest, type RuleRequest } from '../../policy/rules.js';
import { isIpv4 } from '../../net/addr.js';
import { isIpv6 } from '../../net/addr6.js';
import { canonicalIp } from '../../net/validate.js';
import { invalid, notFound } from './errors.js';

export function registerPolicyRoutes(
  app: FastifyInstance,
  policy: PolicyEngine,
  names: NameService,
  docker: DockerWatcher | null,
  domain: string,
): void {
  /** A container reference (key, Docker name or id, DNS name) or an address, as an address. */
  /** An address as given, or a container's (or DNS name's) address of the family asked. */
  async function addressOf(ref: string, what: string, family: 4 | 6): Promise<string> {
    if (isIpv4(ref)) return ref;
    if (isIpv6(ref)) return canonicalIp(ref, what);
    const members = policy.members();
    let m = members.find((x) => x.container === ref) ?? members.find((x) => containerMatches(ref, x.container));
    if (!m && docker?.status.connected) {
      const c = await docker.api.find(ref).catch(() => null);
      if (c) m = members.find((x) => x.container === c.Id);
    }
    const own = m?.addrs.find((a) => a.includes(':') === (family === 6));
    if (own) return own;
    const byName = names.table.lookup(ref, family);
    const ips = byName.length > 0 ? byName : names.table.lookup(`${ref}.${domain}`, family);
    if (ips.length > 0) return ips[0];
    throw notFound(`${what}: no container or name "${ref}" with an IPv${family} address on the overlay`);
  }

  /** container:NAME given by Docker name: the rule keeps the container's full id. */
  async function withDockerIds(r: RuleRequest): Promise<RuleRequest> {
    const fix = async (v: unknown): Promise<unknown> => {
      if (typeof v !== 'string' || !v.startsWith('container:') || !docker?.status.connected) return v;
      const ref = v.slice('container:'.length);
      if (/^[0-9a-f]{12,64}$/.test(ref) || ref.includes(':')) return v;
      const c = await docker.api.find(ref).catch(() => null);
      return c ? `container:${c.Id}` : v;
    };
    return { ...r, to: await fix(r.to), from: await fix(r.from) };
  }

  const show = (r: ReturnType<PolicyTable['rules']>[number]) => ({ ...r, text: describeRule(r) });

  app.get('/policy', async () => ({ rules: policy.table.rules().map(show) }));

  // What the rule says is checked by ruleFromRequest (policy/rules.ts: RuleError, 400): the schema only shapes it.
  const ruleBody = {
    type: 'object',
    additionalProperties: false,
    properties: {
      to: { type: 'string', maxLength: 256 },
      from: { type: 'string', maxLength: 256 },
      proto: { type: 'string', maxLength: 16 },
      port: { anyOf: [{ type: 'string', maxLength: 16 }, { type: 'integer' }] },
      egress: { type: 'boolean' },
    },
  } as const;

  app.post<{ Body: RuleRequest }>('/policy', { schema: { body: ruleBody } }, async (req) => {
    const rule = ruleFromRequest(PolicyTable.newId(), await withDockerIds(req.body ?? {}));
    policy.table.add(rule);
    return show(rule);
  });

  app.delete<{ Params: { id: string } }>(
    '/policy/:id',
    { schema: { params: { type: 'object', properties: { id: { type: 'string', pattern: '^[0-9a-f]{8,32}$' } } } } },
    async (req) => {
      const rule = policy.table.rules().find((r) => r.id === req.params.id);
      if (!rule || !policy.table.remove(rule.id))
        throw notFound(`no rule ${req.params.id} (weft policy list shows them)`);
      return show(rule);
    },
  );

  const checkQuery = {
    type: 'object',
    additionalProperties: false,
    required: ['from', 'to'],
    properties: {
      from: { type: 'string', minLength: 1, maxLength: 256 },
      to: { type: 'string', minLength: 1, maxLength: 256 },
      proto: { type: 'string', maxLength: 16 },
      port: { type: 'string', maxLength: 5 },
      /** Containers and names by their addresses of this family (an IPv6 address given implies 6). */
      family: { type: 'string', enum: ['4', '6'] },
    },
  } as const;

  app.get<{ Querystring: { from: string; to: string; proto?: string; port?: string; family?: '4' | '6' } }>(
    '/policy/check',
    { schema: { querystring: checkQuery } },
    async (req) => {
      const q = req.query;
      const proto = q.proto ? parseProto(q.proto) : 'icmp';
      if (proto === 'any') throw invalid('a flow has one protocol: tcp, udp or icmp');
      let port: number | undefined;
      if (q.port !== undefined && q.port !== '') {
        port = Number(q.port);
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalid(`port "${q.port}" is not 1-65535`);
        if (proto !== 'tcp' && proto !== 'udp') throw invalid('a port needs tcp or udp');
      } else if (proto === 'tcp' || proto === 'udp') throw invalid(`${proto} needs a port (e.g. ${proto}/5432)`);
      const family = q.family === '6' || isIpv6(q.from) || isIpv6(q.to) ? 6 : 4;
      const flow = {
        src: await addressOf(q.from, 'from', family),
        dst: await addressOf(q.to, 'to', family),
        proto,
        ...(port !== undefined ? { port } : {}),
      };
      const d = policy.check(flow);
      const rule = (v: typeof d.egress) => (v.kind === 'allowed' ? v.rule.id : null);
      return {
        flow,
        allowed: d.allowed,
        summary: d.summary,
        egress: { ...d.egress, rule: rule(d.egress) },
        ingress: { ...d.ingress, rule: rule(d.ingress) },
      };
    },
  );

  app.get('/policy/status', async () => policy.status());
}
