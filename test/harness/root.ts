import { describe } from 'vitest';

export const isRoot = process.getuid?.() === 0;

/**
 * A describe block for tests that need root (namespaces, links). Without root
 * they are skipped with a loud note locally, and fail in CI, never silently skipped.
 */
export function describeAsRoot(name: string, fn: () => void): void {
  if (isRoot) {
    describe(name, fn);
  } else if (process.env.CI) {
    describe(name, () => {
      throw new Error(`"${name}" needs root (network namespaces); CI must run as root`);
    });
  } else {
    console.warn(`SKIPPED "${name}": needs root for network namespaces`);
    describe.skip(name, fn);
  }
}
