// The API's lazy schema compilers (router/api/lazy-validation.ts) behave as Fastify's own: a body is
// refused with the same 400 either way, and a route with a response schema (none of the router's has
// one today) is serialized by it, extra fields dropped, through the lazily loaded serializer compiler.
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { lazySerializerBuilder, lazyValidatorBuilder } from '../../../router/api/lazy-validation.js';

const apps: FastifyInstance[] = [];
afterEach(async () => {
  for (const app of apps.splice(0)) await app.close();
});

function server(lazy: boolean): FastifyInstance {
  const app = Fastify({
    logger: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    ...(lazy
      ? {
          schemaController: {
            compilersFactory: { buildValidator: lazyValidatorBuilder, buildSerializer: lazySerializerBuilder },
          },
        }
      : {}),
  });
  apps.push(app);
  app.post<{ Body: { name: string } }>(
    '/echo',
    {
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['name'],
          properties: { name: { type: 'string', maxLength: 8 } },
        },
        response: { 200: { type: 'object', properties: { name: { type: 'string' }, n: { type: 'integer' } } } },
      },
    },
    async (req) => ({ name: req.body.name, n: 3, secret: 'not in the schema' }),
  );
  return app;
}

describe('the lazy schema compilers', () => {
  it('answer as Fastify’s own: the same refusals, and responses serialized by their schema', async () => {
    const answers = [];
    for (const lazy of [false, true]) {
      const app = server(lazy);
      await app.ready();
      const ask = async (payload: unknown) => {
        const r = await app.inject({ method: 'POST', url: '/echo', payload: payload as object });
        return { status: r.statusCode, body: r.json() as unknown };
      };
      answers.push([
        await ask({ name: 'ok' }),
        await ask({ name: 5 }),
        await ask({ name: 'far too long a name' }),
        await ask({ name: 'ok', extra: 1 }),
      ]);
    }
    const [eager, lazy] = answers;
    expect(lazy).toEqual(eager);
    expect(lazy[0]).toEqual({ status: 200, body: { name: 'ok', n: 3 } });
    expect(lazy.slice(1).map((a) => a.status)).toEqual([400, 400, 400]);
  });
});
