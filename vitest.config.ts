import { defineConfig } from 'vitest/config';

// Two kinds of tests (docs/testing.md):
//   unit:  test/unit/<area>/, no root, no namespaces: seconds (npm run test:unit);
//   hosts: test/hosts/, network namespaces, real routers, nftables, Docker, Open vSwitch: root.
// npm test (and .ci/run) runs both.
export default defineConfig({
  test: {
    globalSetup: ['test/harness/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Namespace tests start real processes; two cores are shared by all files.
    maxWorkers: 2,
    reporters: ['default', './test/harness/plain-summary.ts'],
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      { extends: true, test: { name: 'hosts', include: ['test/hosts/**/*.test.ts'] } },
    ],
  },
});
