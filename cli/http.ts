// One HTTP call to a weft router's API, shared by the CLI and the CNI plugin
// (which must stay light: nothing of the router itself is loaded here).

/** The router did not answer at all (refused, reset, timed out); `cause` says how. */
export class RouterUnreachable extends Error {
  constructor(
    readonly addr: string,
    readonly reason: string,
  ) {
    super(`the weft router at ${addr} does not answer (${reason})`);
  }
}

/** Sends a request (a JSON body when given); resolves with whatever status the router answered. */
export async function callRouter(addr: string, method: string, path: string, body: unknown, timeoutMs: number): Promise<{ status: number; text: string }> {
  let res: Response;
  try {
    res = await fetch(`http://${addr}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    throw new RouterUnreachable(addr, (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message);
  }
  return { status: res.status, text: await res.text() };
}
