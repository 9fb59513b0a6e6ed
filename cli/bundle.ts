// Bundles the package's two entries after tsc, each into what Node loads fastest (run by
// `npm run build`; not part of the package):
// - the CLI's entry (cli/weft.ts) with its short way (cli/quick.ts and the few modules it imports)
//   into one CommonJS file, dist/cli/weft.cjs, the package's `weft` command. Node loads one CommonJS
//   file about 15 ms sooner than the same code as seven ES modules (its ES loader reads each file
//   asynchronously and links them in turns; bench/cli), and `weft status` runs in scripts and
//   probes. Every other command still loads dist/cli/commands.js and what it imports as tsc wrote
//   them.
// - the router (router/main.ts and everything it imports, its dependencies too) into one ES module,
//   dist/router/bundle/router.js (a module it imports only when needed goes beside it): loading
//   some four hundred modules one by one was about 130 ms of every router start (bench/startup).
//   lmdb stays outside (native code, found at run time), and so do Fastify's schema compilers (ajv,
//   loaded seconds after start: router/api/lazy-validation.ts); the addon and the command helper are found
//   from the project root as before. Tests that import the router's modules still get tsc's files.
// - dist/router/main.js, the router's command, becomes a small entry that turns on Node's compile
//   cache (Node 22.1 and later; V8's code for the bundle kept between starts, about 50 ms of each)
//   and then imports the bundle. The cache lives beside the code, in dist/router/.compile-cache:
//   as trusted as the code itself, unlike the default in the shared /tmp, which any local user could
//   fill for a root daemon to load. Where it cannot be written (a read-only install), Node goes on
//   without it; NODE_DISABLE_COMPILE_CACHE=1 turns it off.
// The router's bundle is written in ASCII (other characters escaped) and without JSDoc: V8 keeps a
// module's source in memory for as long as the router runs (to compile functions when first
// called), and a single character beyond Latin-1 anywhere (a box-drawing character in a dependency's
// strings) makes it keep all of it at two bytes a character. Licence comments stay.
import { build } from 'rolldown';
import { rmSync, writeFileSync } from 'node:fs';
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
try {
  // Code of an earlier build (Node would not use it anyway: each entry is checked against its source).
  rmSync(here('../router/.compile-cache'), { recursive: true, force: true });
} catch {
  // made by a router run as another user (root): not ours to remove
}
await build({
  input: here('../router/main.js'),
  platform: 'node',
  // Schema compilers load at run time from node_modules, when first used (router/api/lazy-validation.ts).
  external: [/^node:/, 'lmdb', '@fastify/ajv-compiler', '@fastify/fast-json-stringify-compiler'],
  logLevel: 'warn',
  output: {
    dir: here('../router/bundle'),
    format: 'esm',
    entryFileNames: 'router.js',
    chunkFileNames: '[name]-[hash].js',
    sourcemap: false,
    charset: 'ascii',
    comments: { legal: true, annotation: false, jsdoc: false },
  },
});
writeFileSync(
  here('../router/main.js'),
  `#!/usr/bin/env node
// The router's command (written by cli/bundle.ts): Node's compile cache for the bundle, then the bundle.
import module from 'node:module';
import { fileURLToPath } from 'node:url';
module.enableCompileCache?.(fileURLToPath(new URL('.compile-cache', import.meta.url)));
await import('./bundle/router.js');
// Written now, once the router has started: a daemon's clean exit (when Node writes it otherwise) may never come.
module.flushCompileCache?.();
`,
);
