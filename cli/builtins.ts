// The Node built-ins on the CLI's hot path (weft status, the CNI plugin), loaded
// with require rather than import. An ES import of a built-in evaluates every one
// of its lazy exports to build the module's namespace: node:fs then loads
// fs.promises and the file streams, and node:http (Node 22 and later) undici for
// http.WebSocket. That was 10-50 ms of each call; see bench/README.md (CLI start-up).
// The API is called over node:net (cli/http.ts): node:http costs more to load than the call.
import { createRequire } from 'node:module';
import type * as fs from 'node:fs';
import type * as net from 'node:net';

const load = createRequire(import.meta.url);

export const { readFileSync } = load('node:fs') as typeof fs;
export const { connect: netConnect } = load('node:net') as typeof net;
