// One HTTP call to a weft router's API, shared by the CLI and the CNI plugin
// (which must stay light: nothing of the router itself is loaded here). The
// address is HOST:PORT or unix:/PATH (--http-addr unix:...).
import { parseListen } from '../net/host-port.js';
import { httpRequest } from './builtins.js';

/** The router did not answer at all (refused, reset, timed out); `cause` says how. */
export class RouterUnreachable extends Error {
  constructor(
    readonly addr: string,
    readonly reason: string,
  ) {
    super(`the weft router at ${addr} does not answer (${reason})`);
  }
}

/** Where to connect for an API address (a router on every address is reached on loopback). */
function endpoint(addr: string): { socketPath: string } | { host: string; port: number } {
  if (addr.startsWith('unix:')) return { socketPath: addr.slice('unix:'.length) };
  const l = parseListen(addr, 'API address');
  return { host: l.host === '0.0.0.0' ? '127.0.0.1' : l.host === '::' ? '::1' : l.host, port: l.port };
}

/** Sends a request (a JSON body when given); resolves with whatever status the router answered. */
export function callRouter(
  addr: string,
  method: string,
  path: string,
  body: unknown,
  timeoutMs: number,
): Promise<{ status: number; text: string }> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const to = endpoint(addr);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        ...to,
        method,
        path,
        // The API checks Host against its own address; over a socket any name does.
        headers: {
          host: 'socketPath' in to ? 'localhost' : addr,
          ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', (err) => reject(new RouterUnreachable(addr, err.message)));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer in ${Math.round(timeoutMs / 1000)}s`)));
    req.on('error', (err: NodeJS.ErrnoException) => reject(new RouterUnreachable(addr, err.code ?? err.message)));
    req.end(payload);
  });
}
