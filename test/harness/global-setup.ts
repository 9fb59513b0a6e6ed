// Gives this test run an id that every namespace it creates carries, and
// removes anything of this run that a crashed test left behind. Each vitest
// project runs it; they share the one id.
import { randomBytes } from 'node:crypto';
import { cleanupRun } from './cluster.js';

export default function setup(): () => Promise<void> {
  const runId = (process.env.WEFT_TEST_RUN ??= randomBytes(2).toString('hex'));
  return async () => {
    // Without root there are no namespaces to list (the unit tests run as any user).
    if (process.getuid?.() === 0) await cleanupRun(runId);
  };
}
