// A fresh cluster of three launched namespace hosts per test, for the test files
// that need one (security groups, services): removed after each test, with the
// processes the test registered in `stoppers` killed first.
import { afterEach } from 'vitest';
import { Cluster, FAST_THREE_HOSTS, type Host } from './cluster.js';

export function threeHostsPerTest(): {
  /** Creates and launches the three hosts (extra router arguments for all). */
  launch(extra?: string[]): Promise<Host[]>;
  /** A container attached on a host, in these groups (see Cluster.attached). */
  attached(h: Host, label: string, ...groups: string[]): ReturnType<Cluster['attached']>;
  stoppers: (() => void)[];
} {
  let cluster: Cluster | null = null;
  const stoppers: (() => void)[] = [];
  afterEach(async () => {
    for (const s of stoppers.splice(0)) s();
    await cluster?.cleanup();
    cluster = null;
  });
  return {
    async launch(extra = []) {
      cluster = await Cluster.create(3, { routerArgs: [...FAST_THREE_HOSTS, ...extra] });
      return cluster.launchAll();
    },
    attached(h, label, ...groups) {
      if (!cluster) throw new Error('no cluster: launch() first');
      return cluster.attached(h, label, ...groups);
    },
    stoppers,
  };
}
