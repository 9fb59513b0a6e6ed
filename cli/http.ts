// One HTTP call to a weft router's API, shared by the CLI and the CNI plugin
// (which must stay light: nothing of the router itself is loaded here). The
// address is HOST:PORT or unix:/PATH (--http-addr unix:...).
import { parseListen } from '../net/host-port.js';
import { netConnect } from './builtins.js';

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

/** The body of a chunked answer (RFC 9112, 7.1), or null when it is not well-formed. */
function unchunk(raw: Buffer): Buffer | null {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = raw.indexOf('\r\n', at);
    if (eol < 0) return null;
    const size = parseInt(raw.subarray(at, eol).toString('latin1').split(';')[0], 16);
    if (!Number.isFinite(size) || size < 0) return null;
    if (size === 0) return Buffer.concat(parts);
    if (eol + 2 + size > raw.length) return null;
    parts.push(raw.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

/**
 * Sends a request (a JSON body when given); resolves with whatever status the router answered.
 * HTTP/1.1 by hand over one socket (Connection: close): the CLI's start-up is most of `weft status`,
 * and node:http with its client machinery costs more to load than the call itself.
 */
export function callRouter(
  addr: string,
  method: string,
  path: string,
  body: unknown,
  timeoutMs: number,
): Promise<{ status: number; text: string }> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const to = endpoint(addr);
  // The API checks Host against its own address; over a socket any name does.
  const head =
    `${method} ${path} HTTP/1.1\r\nHost: ${'socketPath' in to ? 'localhost' : addr}\r\nConnection: close\r\n` +
    (payload ? `Content-Type: application/json\r\nContent-Length: ${payload.length}\r\n` : '') +
    '\r\n';
  return new Promise((resolve, reject) => {
    const socket = 'socketPath' in to ? netConnect(to.socketPath) : netConnect(to.port, to.host);
    const chunks: Buffer[] = [];
    let settled = false;
    const fail = (reason: string) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      reject(new RouterUnreachable(addr, reason));
    };
    socket.setTimeout(timeoutMs, () => fail(`no answer in ${Math.round(timeoutMs / 1000)}s`));
    socket.on('connect', () => socket.write(payload ? Buffer.concat([Buffer.from(head), payload]) : head)); // no half-close: Node's server would drop the request
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (err: NodeJS.ErrnoException) => fail(err.code ?? err.message));
    socket.on('end', () => {
      if (settled) return;
      const raw = Buffer.concat(chunks);
      const split = raw.indexOf('\r\n\r\n');
      const headers = split < 0 ? '' : raw.subarray(0, split).toString('latin1');
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(headers);
      if (!status) return fail('the answer is not HTTP');
      let content: Buffer | null = raw.subarray(split + 4);
      if (/\r\ntransfer-encoding:\s*chunked/i.test(headers)) content = unchunk(content);
      if (content === null) return fail('the answer was cut short');
      settled = true;
      resolve({ status: Number(status[1]), text: content.toString('utf8') });
    });
  });
}
