// How the API answers errors, in one place: a WeftError by its code, Fastify's
// own (a body that is not JSON, fails its schema, is too large) as what they say,
// and anything else as 500, logged, since it is a bug or a failure of the host
// (an lmdb error, a tool that crashed), not the caller's mistake.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { WeftError, type ErrorCode } from '../../lib/errors.js';
import type { Logger } from '../../lib/logger.js';

const STATUS: Record<ErrorCode, number> = {
  invalid: 400,
  refused: 403,
  'not-found': 404,
  conflict: 409,
  pending: 503,
  full: 503,
  unavailable: 409,
};

/** What the API answers for an error: its status and the message the caller sees. */
function errorReply(err: unknown): { status: number; message: string; bug: boolean } {
  if (err instanceof WeftError) return { status: STATUS[err.code], message: err.message, bug: false };
  const f = err as FastifyError;
  if (f?.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
    return { status: 415, message: 'the API takes JSON bodies only (content-type: application/json)', bug: false };
  if (f?.validation) return { status: 400, message: f.message, bug: false };
  if (typeof f?.statusCode === 'number' && f.statusCode >= 400 && f.statusCode < 500)
    return { status: f.statusCode, message: f.message, bug: false };
  return { status: 500, message: `internal error: ${(err as Error)?.message ?? String(err)}`, bug: true };
}

export function errorHandler(log: Logger) {
  return (err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const e = errorReply(err);
    if (e.bug)
      log.error({ err: (err as Error)?.stack ?? String(err), method: req.method, url: req.url }, 'API request failed');
    void reply.code(e.status).send({ error: e.message });
  };
}

/** Shorthands for a route's own errors. */
export const notFound = (message: string) => new WeftError('not-found', message);
export const invalid = (message: string) => new WeftError('invalid', message);
