#!/usr/bin/env node
// The weft command line: plain `weft status` the short way (cli/quick-status.ts),
// every other command through commander (cli/commands.ts).
import { plainStatus, printStatus } from './quick-status.js';

const status = plainStatus(process.argv.slice(2));
if (status) await printStatus(status);
else await (await import('./commands.js')).runCommands();
