// Plain `weft status`, the command people and scripts run in a loop, without the
// parser of every other command: commander and the router's option table are most
// of the CLI's start-up. Only `status` with the router-location options comes this
// way; anything else (a view, --json, --help) goes through cli/commands.ts, which
// prints the same text from the same endpoint.
import { DEFAULT_DATA_DIR } from '../router/contract.js';
import { exitWithError, request, type Target } from './client.js';

/** The router location when argv is plain `status` (with --data-dir / --http-addr at most), else null. */
export function plainStatus(argv: string[]): Target | null {
  if (argv[0] !== 'status') return null;
  let dataDir: string | undefined;
  let httpAddr: string | undefined;
  for (let i = 1; i < argv.length; i++) {
    const [flag, inline] = argv[i].startsWith('--') && argv[i].includes('=') ? argv[i].split(/=(.*)/s, 2) : [argv[i]];
    const value = inline ?? argv[++i];
    if (value === undefined || value.startsWith('-')) return null; // let commander say what is missing
    if (flag === '--data-dir') dataDir = value;
    else if (flag === '--http-addr') httpAddr = value;
    else return null;
  }
  // As commander's defaults: the flag, else the environment, else the default.
  const env = process.env;
  return {
    dataDir: dataDir ?? env.WEFT_DATA_DIR ?? DEFAULT_DATA_DIR,
    ...((httpAddr ?? env.WEFT_HTTP_ADDR) !== undefined ? { httpAddr: httpAddr ?? env.WEFT_HTTP_ADDR } : {}),
  };
}

export async function printStatus(t: Target): Promise<void> {
  try {
    process.stdout.write((await request(t, 'GET', '/status')).body);
  } catch (err) {
    exitWithError(err);
  }
}
