// host:port, the one way weft reads and writes it: peers (host defaults the port), listen addresses
// (ip:port, ":port" for every address), and the host part of a connection's remote address. IPv6
// hosts are written in brackets.

export interface HostPort {
  host: string;
  port: number;
}

function port(text: string, what: string, whole: string): number {
  const n = Number(text);
  if (!/^\d{1,5}$/.test(text) || !Number.isInteger(n) || n < 1 || n > 65535)
    throw new Error(`invalid port in ${what} "${whole}"`);
  return n;
}

/** A peer's address: host, host:port, [v6] or [v6]:port; the port defaults to `defaultPort`. */
export function parseAddress(text: string, defaultPort: number): HostPort & { addr: string } {
  const t = text.trim();
  let host: string;
  let p = defaultPort;
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::(\d+))?$/.exec(t);
  if (v6) {
    host = v6[1];
    if (v6[2] !== undefined) p = port(v6[2], 'peer address', text);
  } else if (/^[^:\s]+:\d+$/.test(t)) {
    const i = t.lastIndexOf(':');
    host = t.slice(0, i);
    p = port(t.slice(i + 1), 'peer address', text);
  } else if (/^[A-Za-z0-9.-]+$/.test(t)) {
    host = t;
  } else {
    throw new Error(`invalid peer address "${text}": expected host or host:port`);
  }
  if (host.length === 0 || host.length > 253) throw new Error(`invalid host in peer address "${text}"`);
  return { host, port: p, addr: formatHostPort(host, p) };
}

/** A listen address: ip:port, [v6]:port, or :port (every address: 0.0.0.0). */
export function parseListen(text: string, what = 'address'): HostPort {
  const i = text.lastIndexOf(':');
  if (i < 0) throw new Error(`invalid ${what} "${text}": expected ip:port`);
  const host = text.slice(0, i).replace(/^\[|\]$/g, '');
  return { host: host === '' ? '0.0.0.0' : host, port: port(text.slice(i + 1), what, text) };
}

/** host:port, an IPv6 host in brackets. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The host of "host:port" or "[v6]:port". */
export function hostOf(addr: string): string {
  const v6 = /^\[(.*)\]:\d+$/.exec(addr);
  if (v6) return v6[1];
  const i = addr.lastIndexOf(':');
  return i < 0 ? addr : addr.slice(0, i);
}
