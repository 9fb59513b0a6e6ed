// What can go wrong with a request, the same words in every part of weft: each
// domain's error (IpamError, RuleError, ServiceError, InvalidValue ...) is a
// WeftError with one of these codes, and the HTTP API maps codes to statuses in
// one place (router/api/errors.ts). Anything that is not a WeftError is a bug.
export type ErrorCode =
  /** The request itself is wrong (a malformed name, address, rule ...). */
  | 'invalid'
  /** What it names does not exist. */
  | 'not-found'
  /** It clashes with what exists (a name taken, an address held by another). */
  | 'conflict'
  /** Not now: it waits for something (the ring to start, space from another peer); try again. */
  | 'pending'
  /** No space left where it must come from. */
  | 'full'
  /** Refused on purpose (a live peer for rmpeer, a request that is not the API's to serve). */
  | 'refused'
  /** The part that would do it is not running here (no datapath, no Docker). */
  | 'unavailable';

export class WeftError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}
