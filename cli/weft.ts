#!/usr/bin/env node
// The weft command line: plain `weft status`, `weft attach` and `weft detach` the
// short way (cli/quick.ts), every other command through commander (cli/commands.ts).
// The build also bundles this entry with the short way into one CommonJS file
// (dist/cli/weft.cjs, the `weft` of the package: cli/bundle.ts says why), so it
// awaits nothing at the top level.
import { quickCommand, runQuick } from './quick.js';

const quick = quickCommand(process.argv.slice(2));
void (quick ? runQuick(quick) : import('./commands.js').then((m) => m.runCommands()));
