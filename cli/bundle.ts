// Bundles the CLI's entry (cli/weft.ts) with its short way (cli/quick.ts and the few modules it
// imports) into one CommonJS file, dist/cli/weft.cjs: the package's `weft` command. Node loads one
// CommonJS file about 15 ms sooner than the same code as seven ES modules (its ES loader reads each
// file asynchronously and links them in turns; bench/cli), and `weft status` runs in scripts and
// probes. Every other command still loads dist/cli/commands.js and what it imports as tsc wrote
// them. Run by `npm run build` after tsc; not part of the package.
import { build } from 'rolldown';
import { fileURLToPath } from 'node:url';

const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));

await build({
  input: here('./weft.js'),
  platform: 'node',
  // Built-ins stay requires; the long way stays a separate ES module, imported when needed.
  external: [/^node:/, /\/commands\.js$/],
  logLevel: 'warn',
  output: { file: here('./weft.cjs'), format: 'cjs', sourcemap: false },
});
