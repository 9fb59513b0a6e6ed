// Whether the container behind an IPAM ident still exists, for the kinds weft
// can check by itself: `pid:N` (a process) and `netns:NAME` (a named network
// namespace). Anything else (Docker ids, weft:expose, ...) is unknown here and
// never freed by this check; the Docker events watcher covers Docker's.
import { existsSync } from 'node:fs';

export type Liveness = (ident: string) => boolean | null;

export function containerLiveness(procRoot = '/proc', netnsRoot = '/run/netns'): Liveness {
  return (ident) => {
    const pid = /^pid:(\d+)$/.exec(ident);
    if (pid) return existsSync(`${procRoot}/${pid[1]}`);
    const ns = /^netns:([A-Za-z0-9_.-]+)$/.exec(ident);
    if (ns) return existsSync(`${netnsRoot}/${ns[1]}`);
    return null;
  };
}
