// The environment the router process gets, wherever it is started (`weft launch` as a process, the
// router image). Both settings are read when the process starts, so they are set for the process,
// not from inside it.
// - glibc's malloc gives each thread that allocates at once an arena of its own (up to eight per
//   core), and each keeps its freed memory: with two the router's resident memory after start was
//   69-70 MiB in every measurement, without 71-84 MiB (bench/README.md, bench/startup).
// - V8's young generation: from Node 22 on it grows to several times 2 MiB a semi-space and stays so
//   while the router idles (Node 24, one router 35 s after start: 97 MiB resident by default, 90 MiB
//   with 2 MiB semi-spaces); DNS answered at full speed showed no cost (bench/README.md).
const SEMI_SPACE = '--max-semi-space-size=2';

export const ROUTER_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2', NODE_OPTIONS: SEMI_SPACE };

/**
 * The router's environment from its starter's: the starter's own settings win (MALLOC_ARENA_MAX set
 * by hand, say); its NODE_OPTIONS keep theirs and get the semi-space size unless they give one.
 */
export function routerEnv(parent: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...ROUTER_ENV, ...parent };
  const given = parent.NODE_OPTIONS?.trim() ?? '';
  // Node takes V8's flags with dashes or underscores.
  env.NODE_OPTIONS = /--max[-_]semi[-_]space[-_]size\b/.test(given) ? given : `${given} ${SEMI_SPACE}`.trim();
  return env;
}
