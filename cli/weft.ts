#!/usr/bin/env node
// The weft command line: plain `weft status`, `weft attach` and `weft detach` the
// short way (cli/quick.ts), every other command through commander (cli/commands.ts).
import { quickCommand, runQuick } from './quick.js';

const quick = quickCommand(process.argv.slice(2));
if (quick) await runQuick(quick);
else await (await import('./commands.js')).runCommands();
