// Bundles the package's two entries after tsc, each into what Node loads fastest (run by
// `npm run build`; not part of the package):
// - the CLI's entry (cli/weft.ts) with its short way (cli/quick.ts and the few modules it imports)
//   into one CommonJS file, dist/cli/weft.cjs, the package's `weft` command. Node loads one CommonJS
//   file about 15 ms sooner than the same code as seven ES modules (its ES loader reads each file
//   asynchronously and links them in turns; bench/cli), and `weft status` runs in scripts and
//   probes. Every other command still loads dist/cli/commands.js and what it imports as tsc wrote
//   them.
// - the router (router/main.ts and everything it imports, its dependencies too) into one ES module
//   that replaces dist/router/main.js (a module it imports only when needed goes beside it, in
//   dist/router/bundle/): loading some four hundred modules one by one was about 130 ms of every
//   router start (bench/startup). lmdb stays outside (native code, found at run time); the addon
//   and the command helper are found from the project root as before. Tests that import the
//   router's modules still get tsc's files.
import { build } from 'rolldown';
import { rmSync } from 'node:fs';
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

rmSync(here('../router/bundle'), { recursive: true, force: true }); // chunks of an earlier build
await build({
  input: here('../router/main.js'),
  platform: 'node',
  external: [/^node:/, 'lmdb'],
  logLevel: 'warn',
  output: {
    dir: here('../router'),
    format: 'esm',
    entryFileNames: 'main.js',
    chunkFileNames: 'bundle/[name]-[hash].js',
    sourcemap: false,
  },
});
