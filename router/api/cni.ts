// POST /cni: the CNI plugin binary hands over what the runtime gave it (the
// command, the CNI_* variables, the config text) and prints the answer. The body
// of the reply is exactly what the plugin prints on stdout: 200 when it exits 0,
// 422 with the CNI error object when it exits 1 (plugin/cni.ts does the work).
import type { FastifyInstance } from 'fastify';
import type { CniRequest, CniService } from '../../plugin/cni.js';

const text = (max: number) => ({ type: 'string', maxLength: max }) as const;

const cniBody = {
  type: 'object',
  additionalProperties: false,
  required: ['command', 'config'],
  properties: {
    command: text(32),
    containerId: text(1024),
    netns: text(4096),
    ifname: text(64),
    args: text(16_384),
    path: text(16_384),
    /** The network config exactly as the runtime wrote it on the plugin's stdin. */
    config: text(512 * 1024),
  },
} as const;

export function registerCniRoutes(app: FastifyInstance, cni: CniService): void {
  app.post<{ Body: CniRequest }>('/cni', { schema: { body: cniBody } }, async (req, reply) => {
    const answer = await cni.handle(req.body);
    return reply
      .code(answer.ok ? 200 : 422)
      .type('application/json')
      .send(answer.output);
  });
}
