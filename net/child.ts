// Long-lived helper processes (the nft session, the command helper) must never keep the router, a
// test or a CLI alive by themselves: the child and its pipes are unreferenced, and a request waiting
// for an answer keeps a timer instead.
import type { ChildProcess } from 'node:child_process';

/** Ends a helper that is given up on: its input closed, the process killed (its answers are ignored by then). */
export function killChild(child: ChildProcess): void {
  child.stdin?.destroy();
  child.kill('SIGKILL');
}

export function unrefChild(child: ChildProcess): void {
  child.unref();
  for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as { unref?: () => void } | null)?.unref?.();
}
