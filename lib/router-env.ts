// The environment the router process gets, wherever it is started (`weft launch` as a process, the
// router image). glibc's malloc gives each thread that allocates at once an arena of its own (up to
// eight per core), and each keeps its freed memory: with two the router's resident memory after
// start was 69-70 MiB in every measurement, without 71-84 MiB (bench/README.md, bench/startup).
// Read by glibc when the process starts, so it is set for the process, not from inside it.
export const ROUTER_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };
