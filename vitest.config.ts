import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/harness/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Namespace tests start real processes; two cores are shared by all files.
    maxWorkers: 2,
    reporters: ['default', './test/harness/plain-summary.ts'],
  },
});
