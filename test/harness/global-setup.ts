// Gives this test run an id that every namespace it creates carries, and
// removes anything of this run that a crashed test left behind.
import { randomBytes } from 'node:crypto';
import { cleanupRun } from './cluster.js';

export default function setup(): () => Promise<void> {
  const runId = randomBytes(2).toString('hex');
  process.env.WEFT_TEST_RUN = runId;
  return async () => {
    await cleanupRun(runId);
  };
}
