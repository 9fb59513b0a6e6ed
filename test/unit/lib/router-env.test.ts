// The router's environment: weft's settings unless its starter gave its own.
import { describe, expect, it } from 'vitest';
import { routerEnv } from '../../../lib/router-env.js';

describe('routerEnv', () => {
  it('sets two malloc arenas and 2 MiB semi-spaces', () => {
    const env = routerEnv({ PATH: '/usr/bin' });
    expect(env).toMatchObject({ PATH: '/usr/bin', MALLOC_ARENA_MAX: '2', NODE_OPTIONS: '--max-semi-space-size=2' });
  });

  it("keeps the starter's settings: its NODE_OPTIONS get the semi-space size only when they give none", () => {
    expect(routerEnv({ MALLOC_ARENA_MAX: '4' }).MALLOC_ARENA_MAX).toBe('4');
    expect(routerEnv({ NODE_OPTIONS: '--use-openssl-ca' }).NODE_OPTIONS).toBe(
      '--use-openssl-ca --max-semi-space-size=2',
    );
    expect(routerEnv({ NODE_OPTIONS: '--max-semi-space-size=8' }).NODE_OPTIONS).toBe('--max-semi-space-size=8');
    expect(routerEnv({ NODE_OPTIONS: '--max_semi_space_size=8' }).NODE_OPTIONS).toBe('--max_semi_space_size=8');
    expect(routerEnv({ NODE_OPTIONS: '  ' }).NODE_OPTIONS).toBe('--max-semi-space-size=2');
  });
});
