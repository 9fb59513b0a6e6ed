// The commands people and scripts run in loops, without the parser of every
// other command (commander and the router's option table are most of the CLI's
// start-up): plain `weft status`, and `weft attach` / `weft detach` of one
// container. Only these with the router-location options (and attach's
// --gateway) come this way; anything else (a view, --json, --help, addresses,
// groups) goes through cli/commands.ts, which does the same through the same
// endpoints.
import { DEFAULT_DATA_DIR } from '../router/contract.js';
import { exitWithError, request, type Target } from './client.js';

export type QuickCommand =
  | { kind: 'status'; target: Target }
  | { kind: 'attach'; target: Target; container: string; gateway: boolean }
  | { kind: 'detach'; target: Target; container: string };

/** The command when argv is one of the quick ones, else null. */
export function quickCommand(argv: string[]): QuickCommand | null {
  const kind = argv[0];
  if (kind !== 'status' && kind !== 'attach' && kind !== 'detach') return null;
  let dataDir: string | undefined;
  let httpAddr: string | undefined;
  let gateway = false;
  const positional: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    if (!argv[i].startsWith('-')) {
      positional.push(argv[i]);
      continue;
    }
    if (argv[i] === '--gateway' && kind === 'attach') {
      gateway = true;
      continue;
    }
    const [flag, inline] = argv[i].startsWith('--') && argv[i].includes('=') ? argv[i].split(/=(.*)/s, 2) : [argv[i]];
    const value = inline ?? argv[++i];
    if (value === undefined || value.startsWith('-')) return null; // let commander say what is missing
    if (flag === '--data-dir') dataDir = value;
    else if (flag === '--http-addr') httpAddr = value;
    else return null;
  }
  // As commander's defaults: the flag, else the environment, else the default.
  const env = process.env;
  const target: Target = {
    dataDir: dataDir ?? env.WEFT_DATA_DIR ?? DEFAULT_DATA_DIR,
    ...((httpAddr ?? env.WEFT_HTTP_ADDR) !== undefined ? { httpAddr: httpAddr ?? env.WEFT_HTTP_ADDR } : {}),
  };
  if (kind === 'status') return positional.length === 0 ? { kind, target } : null;
  // One container, no addresses: `attach 10.2.1.1/24 NAME` and the like go the long way.
  if (positional.length !== 1) return null;
  return kind === 'attach'
    ? { kind, target, container: positional[0], gateway }
    : { kind, target, container: positional[0] };
}

/**
 * Runs a request that may wait for IPAM (the ring starting, space from another peer), and while it
 * waits says on stderr what for, each time that changes. The router bounds the wait and fails with
 * the reason; this only makes the wait visible.
 */
export async function whileWaiting<T>(t: Target, work: Promise<T>): Promise<T> {
  let done = false;
  let said = '';
  // Unreferenced timers: they must not keep the CLI alive once the request is answered.
  const pause = () => new Promise((r) => setTimeout(r, 1000).unref());
  void (async () => {
    await pause();
    while (!done) {
      try {
        const report = JSON.parse((await request(t, 'GET', '/report')).body) as {
          ipam: { pending: { reason: string; waitingMs: number }[] };
        };
        const p = report.ipam.pending[0];
        if (p && p.reason !== said) {
          process.stderr.write(`waiting ${Math.round(p.waitingMs / 1000)}s for IPAM: ${p.reason}\n`);
          said = p.reason;
        }
      } catch {
        // the request itself reports errors
      }
      await pause();
    }
  })();
  try {
    return await work;
  } finally {
    done = true;
  }
}

export async function runQuick(c: QuickCommand): Promise<void> {
  try {
    if (c.kind === 'status') {
      process.stdout.write((await request(c.target, 'GET', '/status')).body);
    } else if (c.kind === 'attach') {
      const body = { container: c.container, cidrs: [], ...(c.gateway ? { gateway: true } : {}) };
      const ep = JSON.parse((await whileWaiting(c.target, request(c.target, 'POST', '/attach', body))).body) as {
        cidrs: string[];
        cidrs6?: string[];
        warning?: string;
      };
      if (ep.warning) console.error(`weft: warning: ${ep.warning}`);
      console.log([...ep.cidrs, ...(ep.cidrs6 ?? [])].join(' '));
    } else {
      const path = `/attach/${encodeURIComponent(c.container)}`;
      const ep = JSON.parse((await request(c.target, 'DELETE', path)).body) as { cidrs: string[]; cidrs6?: string[] };
      console.log([...ep.cidrs, ...(ep.cidrs6 ?? [])].join(' '));
    }
  } catch (err) {
    exitWithError(err);
  }
}
