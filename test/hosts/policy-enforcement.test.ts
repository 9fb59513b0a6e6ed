// Security groups fail closed in what they say: on a host where br_netfilter
// does not work (here: its switch masked in the router's mount namespace, as a
// kernel without the module would leave it), status, the metrics and an attach
// into a limited group all say the policy is NOT enforced, and why; a host
// where it works says it is.
import { afterEach, expect, it } from 'vitest';
import { Cluster, WEFT_CLI, eventually } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { run } from '../harness/exec.js';

let cluster: Cluster | null = null;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = null;
});

const metric = async (ns: string, name: string) => {
  const r = await run('ip', [
    'netns',
    'exec',
    ns,
    process.execPath,
    '-e',
    "fetch('http://127.0.0.1:6782/metrics').then((r) => r.text()).then((t) => console.log(t))",
  ]);
  return Number(new RegExp(`^${name} (\\d+)`, 'm').exec(r.stdout)?.[1]);
};

describeAsRoot('security groups fail closed', () => {
  it('without a working br_netfilter, status, metrics and attach say the policy is NOT enforced, and why', async () => {
    cluster = await Cluster.create(2, {
      routerArgs: ['--heartbeat-interval', '500ms', '--gossip-interval', '1s', '--ipalloc-init', 'consensus=2'],
    });
    const [h1, h2] = cluster.hosts;
    // Host 1's router starts in a mount namespace where the switch reads nothing back.
    const masked = await run(
      'ip',
      [
        'netns',
        'exec',
        h1.ns,
        'sh',
        '-c',
        `mount --bind /dev/null /proc/sys/net/bridge/bridge-nf-call-iptables && exec "$0" "$@"`,
        process.execPath,
        WEFT_CLI,
        'launch',
        '--no-docker',
        '--nickname',
        h1.nickname,
        ...h1.routerArgs,
      ],
      {
        env: { ...process.env, WEFT_DATA_DIR: h1.dataDir },
        timeoutMs: 40_000,
      },
    );
    expect(masked.code, masked.stderr).toBe(0);
    await h2.launch([h1.ip]);
    expect(
      (await h1.weft(['policy', 'allow', '--to', 'db', '--from', 'web', '--proto', 'tcp', '--port', '5432'])).code,
    ).toBe(0);
    await eventually('the rule on host 2', async () =>
      (await h2.weft(['policy', 'list'])).stdout.includes('db accepts'),
    );

    const db1 = await cluster.container('db1');
    const a1 = await h1.weft(['attach', '--group', 'db', `netns:${db1}`]);
    expect(a1.code).toBe(0);
    expect(a1.stderr).toMatch(/warning: security groups are NOT enforced on this host: br_netfilter is not working/);
    const st = await h1.weft(['status', 'policy']);
    expect(st.stdout).toMatch(/NOT enforced here: br_netfilter is not working/);
    expect((await h1.weft(['status'])).stdout).toMatch(/Policy: .*NOT enforced: br_netfilter/);
    expect(await metric(h1.ns, 'weft_policy_enforced')).toBe(0);

    // The other host enforces, and says so; its attach into the same group warns of nothing.
    const db2 = await cluster.container('db2');
    const a2 = await h2.weft(['attach', '--group', 'db', `netns:${db2}`]);
    expect(a2.code).toBe(0);
    expect(a2.stderr).not.toMatch(/NOT enforced/);
    expect((await h2.weft(['status', 'policy'])).stdout).not.toMatch(/NOT enforced/);
    expect(await metric(h2.ns, 'weft_policy_enforced')).toBe(1);
  }, 120_000);
});
