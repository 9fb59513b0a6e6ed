#!/usr/bin/env node
// The router daemon: `node dist/router/main.js [options] [peer...]`. Usually
// started by `weft launch`, which also runs it as a Docker container.
import { Command } from 'commander';
import { pino } from 'pino';
import { addRouterOptions, toRouterOptions } from './options.js';
import { Router } from './router.js';
import { VERSION } from '../lib/version.js';

const program = addRouterOptions(
  new Command('weft-router')
    .description('the weft router daemon')
    .version(VERSION)
    .argument('[peers...]', 'peers to connect to (host[:port])'),
);
program.parse();
let opts;
try {
  opts = toRouterOptions(program.opts(), program.args);
} catch (err) {
  console.error(`weft-router: ${(err as Error).message}`);
  process.exit(2);
}
const log = pino({ level: opts.logLevel, base: { nickname: opts.nickname } });

// A background task that fails is a bug to log and count, not a reason to take the network down.
process.on('unhandledRejection', (reason) =>
  log.error({ err: reason instanceof Error ? reason.message : String(reason) }, 'unhandled rejection'),
);

try {
  const router = await Router.start(opts, log);
  let signalled = false;
  const shutdown = (sig: string) => {
    if (signalled) return;
    signalled = true;
    log.info({ signal: sig }, 'stopping');
    router.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
} catch (err) {
  log.error({ err: (err as Error).message }, 'router failed to start');
  console.error(`weft-router: cannot start: ${(err as Error).message}`);
  process.exit(1);
}
