// Chaos: five namespace hosts; while containers are attached and detached (with
// DNS names), routers are killed with -9 and restarted and links are cut and
// restored. Then the faults stop, the mesh converges, and the invariants are
// checked: no address owned twice, every attached container's addresses owned
// by it, DNS tables equal everywhere and naming only attached containers,
// topologies equal, and containers on different hosts reach each other.
// Bounded: WEFT_CHAOS_SECONDS (default 45) of faults; WEFT_CHAOS_SEED repeats a run.
import { afterAll, expect, it } from 'vitest';
import type { Report } from '../../router/contract.js';
import { Cluster, eventually, type Host } from '../harness/cluster.js';
import { describeAsRoot } from '../harness/root.js';
import { echo, echoServer } from '../harness/traffic.js';
import { seededRandom } from '../harness/random.js';

const SECONDS = Number(process.env.WEFT_CHAOS_SECONDS ?? 45);
const SEED = Number(process.env.WEFT_CHAOS_SEED ?? Date.now() % 1_000_000);
const HOSTS = 5;
const CONTAINERS_PER_HOST = 3;

let cluster: Cluster | null = null;
afterAll(async () => {
  await cluster?.cleanup();
});

interface Slot {
  host: Host;
  ns: string;
  name: string;
  attached: boolean;
}

describeAsRoot('chaos', () => {
  it(
    `${HOSTS} hosts under kills, partitions and churn keep every invariant`,
    async () => {
      const random = seededRandom(SEED);
      const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)];
      cluster = await Cluster.create(HOSTS, {
        routerArgs: [
          '--heartbeat-interval',
          '500ms',
          '--gossip-interval',
          '1s',
          '--ipalloc-init',
          `consensus=${HOSTS}`,
          '--ipalloc-timeout',
          '5s',
        ],
      });
      const hosts = cluster.hosts;
      await hosts[0].launch();
      for (const h of hosts.slice(1)) await h.launch([hosts[0].ip]);
      await eventually(
        'full mesh',
        async () =>
          (await hosts[0].report<Report>()).connections.filter((c) => c.state === 'established').length === HOSTS - 1,
        30_000,
        500,
      );
      const slots: Slot[] = [];
      for (const h of hosts)
        for (let i = 0; i < CONTAINERS_PER_HOST; i++)
          slots.push({
            host: h,
            ns: await cluster.container(`${h.nickname}-c${i}`),
            name: `${h.nickname}-c${i}.weft.local`,
            attached: false,
          });

      const down = new Set<Host>();
      const cut = new Set<Host>();
      const figures = { operations: 0, failedOperations: 0, kills: 0, partitions: 0 };
      const end = Date.now() + SECONDS * 1000;
      const pending: Promise<unknown>[] = [];
      while (Date.now() < end) {
        const r = random();
        if (r < 0.2 && down.size === 0) {
          // Kill a router with -9 (at most one down at a time); it comes back in 2-5 s.
          const h = pick(hosts.filter((x) => !cut.has(x)));
          await h.kill();
          down.add(h);
          figures.kills++;
          const back = 2000 + random() * 3000;
          pending.push(
            new Promise((res) => setTimeout(res, back)).then(async () => {
              await h.launch([hosts[0] === h ? hosts[1].ip : hosts[0].ip]);
              down.delete(h);
            }),
          );
        } else if (r < 0.35 && cut.size === 0) {
          // Cut a host off the underlay for 2-5 s (one at a time, maybe while another router is down).
          const h = pick(hosts.filter((x) => !down.has(x)));
          await h.cut();
          cut.add(h);
          figures.partitions++;
          const back = 2000 + random() * 3000;
          pending.push(
            new Promise((res) => setTimeout(res, back)).then(async () => {
              await h.restore();
              cut.delete(h);
            }),
          );
        } else {
          // Attach or detach a container on a host whose router runs.
          const s = pick(slots.filter((x) => !down.has(x.host)));
          if (!s) continue;
          figures.operations++;
          const res = s.attached
            ? await s.host.weft(['detach', `netns:${s.ns}`], { timeoutMs: 20_000 })
            : await s.host.weft(['attach', '-h', s.name, `netns:${s.ns}`], { timeoutMs: 20_000 });
          if (res.code === 0) s.attached = !s.attached;
          else figures.failedOperations++; // e.g. no space reachable while cut off: fails with a reason, changes nothing
        }
        await new Promise((res) => setTimeout(res, 100 + random() * 300));
      }
      await Promise.all(pending);

      // Faults over: everything converges.
      const reports = async () => Promise.all(hosts.map((h) => h.report<Report>()));
      const topo = (r: Report) => JSON.stringify(r.peers.map((p) => [p.name, p.uid, p.version]).sort());
      await eventually(
        'topologies equal with every peer',
        async () => {
          const rs = await reports();
          return rs.every((r) => r.peers.length === HOSTS && topo(r) === topo(rs[0]));
        },
        60_000,
        1000,
      );
      const dnsTable = (r: Report) =>
        JSON.stringify(r.dns.entries.map((e) => [e.hostname, e.ip, e.container, e.origin]).sort());
      await eventually(
        'DNS tables equal',
        async () => {
          const rs = await reports();
          return rs.every((r) => dnsTable(r) === dnsTable(rs[0]));
        },
        60_000,
        1000,
      );

      const rs = await reports();
      const violations: string[] = [];
      // 1. No address owned twice, across all hosts.
      const owner = new Map<string, string>();
      for (const [i, r] of rs.entries()) {
        for (const o of r.ipam.owned) {
          for (const a of o.addresses) {
            const who = `${hosts[i].nickname}/${o.ident}`;
            if (owner.has(a)) violations.push(`${a} owned by ${owner.get(a)} and ${who}`);
            owner.set(a, who);
          }
        }
      }
      // 2. Every attached container's addresses are owned by it, on its host; the test's own view agrees.
      for (const [i, r] of rs.entries()) {
        for (const e of r.datapath!.localEndpoints) {
          for (const c of e.cidrs)
            if (owner.get(c.split('/')[0]) !== `${hosts[i].nickname}/${e.container}`)
              violations.push(
                `${e.container} on ${hosts[i].nickname} has ${c}, owned by ${owner.get(c.split('/')[0]) ?? 'nobody'}`,
              );
        }
      }
      const attached = new Set(rs.flatMap((r) => r.datapath!.localEndpoints.map((e) => e.container)));
      for (const s of slots)
        if (s.attached !== attached.has(`netns:${s.ns}`))
          violations.push(
            `netns:${s.ns}: the test thinks ${s.attached ? 'attached' : 'detached'}, the routers disagree`,
          );
      // 3. DNS names only for attached containers, and every attached container named.
      const named = new Set(rs[0].dns.entries.map((e) => e.container));
      for (const e of rs[0].dns.entries)
        if (!attached.has(e.container))
          violations.push(`DNS has ${e.hostname} for ${e.container}, which is not attached`);
      for (const c of attached) if (!named.has(c)) violations.push(`${c} is attached but has no DNS name`);
      // 4. Containers on different hosts reach each other: each attached one to the next in a ring.
      const live = slots.filter((s) => s.attached);
      let reached = 0;
      if (live.length >= 2) {
        const servers = await Promise.all(live.map((s) => echoServer(s.ns, 7700)));
        try {
          for (const [i, s] of live.entries()) {
            const t = live[(i + 1) % live.length];
            const ip = rs
              .flatMap((r) => r.datapath!.localEndpoints)
              .find((e) => e.container === `netns:${t.ns}`)!
              .cidrs[0].split('/')[0];
            const ok = await eventually(
              `${s.ns} reaches ${t.ns}`,
              async () => (await echo(s.ns, ip, 7700, 'tcp', 2000).catch(() => 0)) === 2000,
              20_000,
              500,
            ).catch(() => false);
            if (ok) reached++;
            else violations.push(`${s.ns} cannot reach ${t.ns} (${ip})`);
          }
        } finally {
          for (const sv of servers) sv.stop();
        }
      }
      console.log(
        `chaos: seed ${SEED}, ${SECONDS}s of faults, ${figures.operations} attach/detach operations (${figures.failedOperations} refused with a reason), ` +
          `${figures.kills} kills (-9), ${figures.partitions} partitions; after convergence ${attached.size} containers attached, ${owner.size} addresses owned, ` +
          `${rs[0].dns.entries.length} names, ${reached}/${live.length} ring pairs reached; invariant violations: ${violations.length}`,
      );
      expect(violations, `seed ${SEED}`).toEqual([]);
    },
    (SECONDS + 240) * 1000,
  );
});
