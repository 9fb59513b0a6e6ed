// Following the Docker engine's events against a fake engine on a unix socket: without an engine the
// watch backs off (2 s doubling to 10 s by default; shortened here) and says when it tries again; a
// refused stream is tried again too; an engine that answers any other call is watched at once; events
// reach the caller once the stream is open.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DockerApi, type DockerEvent } from '../../../plugin/docker-api.js';
import { eventually } from '../../harness/cluster.js';

let dir: string;
let socket: string;
let server: http.Server | null;
let stops: (() => void)[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'weft-docker-watch-'));
  socket = join(dir, 'docker.sock');
  server = null;
  stops = [];
});

afterEach(async () => {
  for (const stop of stops) stop();
  if (server) {
    server.closeAllConnections();
    await new Promise((r) => server!.close(r));
  }
  rmSync(dir, { recursive: true, force: true });
});

/** A fake engine: /events answers with `eventsStatus` (a 200 stream stays open), /_ping with OK. */
function engine(eventsStatus: () => number, streams: http.ServerResponse[] = []): Promise<void> {
  server = http.createServer((req, res) => {
    if (req.url?.startsWith('/events')) {
      const status = eventsStatus();
      res.writeHead(status, { 'content-type': 'application/json' });
      if (status >= 300) res.end('{"message":"not now"}');
      else {
        res.flushHeaders();
        streams.push(res);
      }
    } else res.end('OK');
  });
  return new Promise((r) => server!.listen(socket, () => r()));
}

function watch(
  api: DockerApi,
  retryMs: number,
  maxRetryMs: number,
): { states: { up: boolean; why: string }[]; events: DockerEvent[] } {
  const states: { up: boolean; why: string }[] = [];
  const events: DockerEvent[] = [];
  const w = api.watch(
    (e) => events.push(e),
    (up, why) => states.push({ up, why }),
    retryMs,
    maxRetryMs,
  );
  stops.push(w.stop);
  return { states, events };
}

describe('following the Docker engine', () => {
  it('backs off while no engine answers, saying when it tries again, and starts over once one does', async () => {
    const api = new DockerApi(`unix://${socket}`);
    const w = watch(api, 20, 80);
    await eventually('five failed attempts', async () => w.states.length >= 5, 5000, 10);
    expect(w.states.slice(0, 5)).toEqual(
      ['20 ms', '40 ms', '80 ms', '80 ms', '80 ms'].map((wait) => ({
        up: false,
        why: `no Docker engine answers at unix://${socket}; trying again in ${wait}`,
      })),
    );
    const streams: http.ServerResponse[] = [];
    await engine(() => 200, streams);
    await eventually('the stream open', async () => w.states.at(-1)?.up, 5000, 10);
    expect(w.states.at(-1)).toEqual({ up: true, why: 'watching events' });
    // An event on the stream reaches the caller; a line that is not one is skipped.
    streams[0].write('not json\n');
    streams[0].write(JSON.stringify({ Action: 'die', Actor: { ID: 'a'.repeat(64) }, time: 1 }) + '\n');
    await eventually('the event', async () => w.events.length === 1, 5000, 10);
    expect(w.events[0].Action).toBe('die');
    // The engine drops the stream after it stayed open a while: the next try waits the shortest delay again.
    await new Promise((r) => setTimeout(r, 100));
    const before = w.states.length;
    streams[0].end();
    await eventually('the stream closed', async () => w.states.length > before, 5000, 10);
    expect(w.states[before]).toEqual({
      up: false,
      why: 'the engine closed the events stream; trying again in 20 ms',
    });
    await eventually('the stream open again', async () => w.states.at(-1)?.up && streams.length === 2, 5000, 10);
  });

  it('tries again after the engine refuses the stream', async () => {
    let refusals = 2;
    await engine(() => (refusals-- > 0 ? 500 : 200));
    const w = watch(new DockerApi(`unix://${socket}`), 20, 80);
    await eventually('the stream open', async () => w.states.at(-1)?.up, 5000, 10);
    expect(w.states).toEqual([
      { up: false, why: 'the engine refused the events stream (500); trying again in 20 ms' },
      { up: false, why: 'the engine refused the events stream (500); trying again in 40 ms' },
      { up: true, why: 'watching events' },
    ]);
  });

  it('backs off from a stream the engine closes at once, even while other calls are answered', async () => {
    let opened = 0;
    server = http.createServer((req, res) => {
      if (req.url?.startsWith('/events')) opened++;
      res.end(req.url?.startsWith('/events') ? '' : 'OK');
    });
    await new Promise<void>((r) => server!.listen(socket, () => r()));
    const api = new DockerApi(`unix://${socket}`);
    const w = watch(api, 20, 80);
    const deadline = Date.now() + 400;
    while (Date.now() < deadline) {
      await api.ping();
      await new Promise((r) => setTimeout(r, 5));
    }
    // 20 + 40 + 80 + 80 + ... ms: about six tries in 400 ms, not one per answered call.
    expect(opened).toBeGreaterThanOrEqual(3);
    expect(opened).toBeLessThanOrEqual(8);
    // Each stream opened was reported (the last may still be on its way to the client).
    expect(w.states.filter((s) => s.up).length).toBeGreaterThanOrEqual(opened - 1);
  });

  it('watches at once when the engine answers another call, not after the delay', async () => {
    const api = new DockerApi(`unix://${socket}`);
    const w = watch(api, 600_000, 600_000);
    await eventually('the first attempt', async () => w.states.length === 1, 5000, 10);
    expect(w.states[0].why).toMatch(/trying again in 600 s$/);
    await engine(() => 200);
    await api.ping();
    await eventually('the stream open', async () => w.states.at(-1)?.up, 5000, 10);
  });
});
