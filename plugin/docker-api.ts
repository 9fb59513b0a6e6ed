// A small client for the Docker Engine API: the dozen calls weft makes, over the
// engine's unix socket (or tcp://) with node:http. dockerode would bring 67
// packages (gRPC, ssh2 and a native build among them) for these calls.
import http from 'node:http';
import type { Readable } from 'node:stream';

/** The engine's answer to a failed call, with its status and Docker's own message. */
export class DockerError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

export interface ContainerInfo {
  Id: string;
  Name: string;
  RestartCount?: number;
  State: { Running: boolean; Pid: number; Status: string; ExitCode?: number };
  Config: { Labels: Record<string, string> | null; Hostname?: string };
  NetworkSettings: {
    Networks: Record<
      string,
      {
        NetworkID: string;
        EndpointID: string;
        IPAddress: string;
        IPPrefixLen: number;
        MacAddress: string;
        /** On a network created with --ipv6. */
        GlobalIPv6Address?: string;
      }
    > | null;
  };
  HostConfig?: { Privileged?: boolean };
}

export interface DockerEvent {
  Type: string;
  Action: string;
  Actor: { ID: string; Attributes: Record<string, string> };
}

/** The engine address: DOCKER_HOST's form (unix:///path or tcp://host:port), or a bare socket path. */
export function defaultDockerApi(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_HOST || 'unix:///var/run/docker.sock';
}

/** The socket path of a unix:// address, or null. */
export function dockerSocketPath(api: string): string | null {
  if (api.startsWith('unix://')) return api.slice('unix://'.length);
  if (api.startsWith('/')) return api;
  return null;
}

export class DockerApi {
  private readonly target: { socketPath: string } | { host: string; port: number };
  /** Watches waiting to reopen their stream, told when the engine answers any call. */
  private readonly answeredHooks = new Set<() => void>();

  constructor(readonly address: string) {
    const sock = dockerSocketPath(address);
    if (sock) this.target = { socketPath: sock };
    else {
      const m = /^tcp:\/\/([^:/]+):(\d+)\/?$/.exec(address);
      if (!m) throw new Error(`Docker API address must be unix:///path or tcp://host:port, not "${address}"`);
      this.target = { host: m[1], port: Number(m[2]) };
    }
  }

  /** One call; JSON in and out. A non-2xx answer becomes a DockerError with Docker's message. */
  async call<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    opts: { timeoutMs?: number; raw?: Readable; headers?: Record<string, string> } = {},
  ): Promise<T> {
    const res = await this.request(method, path, body, opts);
    const text = await readAll(res);
    if ((res.statusCode ?? 500) >= 300)
      throw new DockerError(dockerMessage(text, res.statusCode ?? 500), res.statusCode ?? 500);
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      return text as T;
    }
  }

  private request(
    method: string,
    path: string,
    body: unknown,
    opts: { timeoutMs?: number; raw?: Readable; headers?: Record<string, string> },
  ): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = { ...opts.headers };
      const payload = body === undefined ? undefined : JSON.stringify(body);
      if (payload !== undefined) headers['content-type'] = 'application/json';
      const req = http.request({ ...this.target, method, path, headers, timeout: opts.timeoutMs ?? 30_000 }, (res) => {
        for (const hook of this.answeredHooks) hook();
        resolve(res);
      });
      req.on('timeout', () =>
        req.destroy(new Error(`the Docker engine at ${this.address} did not answer ${method} ${path} in time`)),
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        const why =
          err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
            ? `no Docker engine answers at ${this.address} (${err.code})`
            : `Docker engine at ${this.address}: ${err.message}`;
        reject(new DockerError(why, 0));
      });
      if (opts.raw) opts.raw.pipe(req);
      else req.end(payload);
    });
  }

  ping(): Promise<unknown> {
    return this.call('GET', '/_ping', undefined, { timeoutMs: 3000 });
  }

  version(): Promise<{ Version: string; ApiVersion: string }> {
    return this.call('GET', '/version', undefined, { timeoutMs: 5000 });
  }

  inspect(idOrName: string): Promise<ContainerInfo> {
    return this.call('GET', `/containers/${encodeURIComponent(idOrName)}/json`);
  }

  /** The container, or null when the engine has none by that id or name. */
  async find(idOrName: string): Promise<ContainerInfo | null> {
    try {
      return await this.inspect(idOrName);
    } catch (err) {
      if (err instanceof DockerError && err.status === 404) return null;
      throw err;
    }
  }

  /** Running containers (ids). */
  async running(): Promise<string[]> {
    const list = await this.call<{ Id: string }[]>('GET', '/containers/json');
    return list.map((c) => c.Id);
  }

  async create(name: string, spec: Record<string, unknown>): Promise<string> {
    const r = await this.call<{ Id: string }>('POST', `/containers/create?name=${encodeURIComponent(name)}`, spec);
    return r.Id;
  }

  async start(id: string): Promise<void> {
    await this.call('POST', `/containers/${encodeURIComponent(id)}/start`);
  }

  async stop(id: string, seconds = 10): Promise<void> {
    await this.call('POST', `/containers/${encodeURIComponent(id)}/stop?t=${seconds}`, undefined, {
      timeoutMs: (seconds + 20) * 1000,
    });
  }

  async remove(id: string, force = true): Promise<void> {
    await this.call('DELETE', `/containers/${encodeURIComponent(id)}?force=${force ? 1 : 0}&v=1`);
  }

  /** The last lines of a container's output (Docker's multiplexed log stream, unwrapped). */
  async logs(id: string, lines = 20): Promise<string> {
    const res = await this.request(
      'GET',
      `/containers/${encodeURIComponent(id)}/logs?stdout=1&stderr=1&tail=${lines}`,
      undefined,
      {},
    );
    return demuxLogs(Buffer.from(await readAll(res, 'latin1'), 'latin1'));
  }

  async imageExists(ref: string): Promise<boolean> {
    try {
      await this.call('GET', `/images/${encodeURIComponent(ref)}/json`);
      return true;
    } catch (err) {
      if (err instanceof DockerError && err.status === 404) return false;
      throw err;
    }
  }

  /** `docker import`: an image from a root filesystem tarball, with Dockerfile-style changes (ENTRYPOINT, ENV). */
  async importImage(tar: Readable, repo: string, tag: string, changes: string[]): Promise<void> {
    const q = new URLSearchParams({ fromSrc: '-', repo, tag });
    for (const c of changes) q.append('changes', c);
    const res = await this.request('POST', `/images/create?${q}`, undefined, {
      raw: tar,
      timeoutMs: 300_000,
      headers: { 'content-type': 'application/x-tar' },
    });
    const text = await readAll(res);
    const failed = /"error(Detail)?"\s*:/.test(text);
    if ((res.statusCode ?? 500) >= 300 || failed)
      throw new DockerError(
        `docker import failed: ${dockerMessage(text, res.statusCode ?? 500)}`,
        res.statusCode ?? 500,
      );
  }

  /**
   * Follows the engine's container events until stop() is called. A dropped or refused stream is
   * reopened from where it broke, after `retryMs`, doubling while the engine stays away up to
   * `maxRetryMs` (a host without Docker pays one attempt per 10 s, not one per 2 s; Docker waits 30 s
   * for a plugin's socket at its own start, so the plugin is served in time). The delay starts over
   * only after a stream stayed open `maxRetryMs` (one the engine closes at once is not reopened in a
   * loop). While no engine answered at all, any call one answers (`weft attach` of a container, say)
   * reopens the stream at once. onState says when the engine comes and goes, and when the next try is.
   */
  watch(
    onEvent: (e: DockerEvent) => void,
    onState: (up: boolean, why: string) => void,
    retryMs = 2000,
    maxRetryMs = 10_000,
  ): { stop: () => void } {
    let stopped = false;
    let current: http.ClientRequest | null = null;
    let since = Math.floor(Date.now() / 1000);
    let delay = retryMs;
    /** When the stream last opened (0: it is not open). */
    let openedAt = 0;
    /** The last try found no engine at all (not a refusal, not a dropped stream). */
    let absent = false;
    const open = () => {
      if (stopped) return;
      absent = false;
      const filters = encodeURIComponent(JSON.stringify({ type: ['container'] }));
      const req = http.request(
        { ...this.target, method: 'GET', path: `/events?since=${since}&filters=${filters}` },
        (res) => {
          if ((res.statusCode ?? 500) >= 300) {
            res.resume();
            retry(`the engine refused the events stream (${res.statusCode})`);
            return;
          }
          openedAt = Date.now();
          onState(true, 'watching events');
          let buf = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            buf += chunk;
            let nl: number;
            while ((nl = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, nl).trim();
              buf = buf.slice(nl + 1);
              if (!line) continue;
              try {
                const e = JSON.parse(line) as DockerEvent & { time?: number };
                if (typeof e.time === 'number') since = e.time;
                if (e && typeof e.Action === 'string' && e.Actor && typeof e.Actor.ID === 'string') onEvent(e);
              } catch {
                // not an event: skip the line
              }
            }
          });
          res.on('end', () => retry('the engine closed the events stream'));
          res.on('error', (err) => retry(err.message));
        },
      );
      current = req;
      req.on('error', (err: NodeJS.ErrnoException) => {
        absent = err.code === 'ENOENT' || err.code === 'ECONNREFUSED';
        retry(absent ? `no Docker engine answers at ${this.address}` : err.message);
      });
      req.end();
    };
    let pending: NodeJS.Timeout | null = null;
    const retry = (why: string) => {
      if (stopped || pending) return;
      if (openedAt && Date.now() - openedAt >= maxRetryMs) delay = retryMs;
      openedAt = 0;
      const wait = delay;
      delay = Math.min(delay * 2, maxRetryMs);
      onState(false, `${why}; trying again in ${formatWait(wait)}`);
      pending = setTimeout(() => {
        pending = null;
        open();
      }, wait);
      pending.unref();
    };
    // The engine answered another call: it is there now, so waiting out the delay would only be late.
    const answered = () => {
      if (stopped || !pending || !absent) return;
      clearTimeout(pending);
      pending = null;
      delay = retryMs;
      open();
    };
    this.answeredHooks.add(answered);
    open();
    return {
      stop: () => {
        stopped = true;
        this.answeredHooks.delete(answered);
        if (pending) clearTimeout(pending);
        current?.destroy();
      },
    };
  }
}

function formatWait(ms: number): string {
  return ms >= 1000 ? `${Math.round(ms / 1000)} s` : `${ms} ms`;
}

function readAll(res: http.IncomingMessage, encoding: BufferEncoding = 'utf8'): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolve(Buffer.concat(chunks).toString(encoding)));
    res.on('error', reject);
  });
}

function dockerMessage(text: string, status: number): string {
  try {
    const lines = text.trim().split('\n');
    const j = JSON.parse(lines[lines.length - 1]) as { message?: string; error?: string };
    return j.message ?? j.error ?? `HTTP ${status}`;
  } catch {
    return text.trim() || `HTTP ${status}`;
  }
}

/** Docker's log stream for containers without a TTY: 8-byte headers (stream, 0, 0, 0, length BE32) before each chunk. */
function demuxLogs(buf: Buffer): string {
  let out = '';
  let i = 0;
  while (i + 8 <= buf.length) {
    const len = buf.readUInt32BE(i + 4);
    out += buf.subarray(i + 8, i + 8 + len).toString('utf8');
    i += 8 + len;
  }
  return i === 0 && buf.length > 0 ? buf.toString('utf8') : out;
}
