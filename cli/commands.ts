// The weft command line, every command (cli/weft.ts sends plain `weft status` a
// shorter way). Every command that needs the router finds it through --data-dir /
// WEFT_DATA_DIR (or --http-addr / WEFT_HTTP_ADDR) and says so in one line, exiting
// non-zero, when none runs.
import { VERSION } from '../lib/version.js';
import { Command, Option } from 'commander';
import { addRouterOptions } from '../router/options.js';
import { DEFAULT_DATA_DIR } from '../router/contract.js';
import {
  renderConnections,
  renderDns,
  renderIpam,
  renderPeers,
  renderPolicyStatus,
  renderPs,
  renderStatus,
  renderTargets,
} from '../router/render.js';
import type { Report } from '../router/contract.js';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { CliError, exitWithError, isAlive, readRouterInfo, request, type Target } from './client.js';
import { whileWaiting } from './quick.js';
import type { PolicyStatus } from '../router/contract.js';
import { ROUTER_INFO_FILE, type ServiceDetail } from '../router/contract.js';

/** Everything a router keeps in its data dir (weft reset removes it all, and the log). */
const STATE_FILES = [
  'ipam',
  'identity.json',
  ROUTER_INFO_FILE,
  'names.json',
  'endpoints.json',
  'exposed.json',
  'exposed6.json',
  'docker-attached.json',
  'docker-pools.json',
  'policy.json',
  'services.json',
  'policy-members.json',
  'services-members.json',
  'peer-keys.json',
  'weft.log',
];

function withRouterLocation(cmd: Command): Command {
  return cmd
    .addOption(
      new Option('--data-dir <dir>', 'data directory of the router to talk to')
        .env('WEFT_DATA_DIR')
        .default(DEFAULT_DATA_DIR),
    )
    .addOption(
      new Option('--http-addr <ip:port|unix:path>', 'talk to the router API at this address instead').env(
        'WEFT_HTTP_ADDR',
      ),
    );
}

function target(cmd: Command): Target {
  const o = cmd.opts();
  return { dataDir: o.dataDir as string, httpAddr: o.httpAddr as string | undefined };
}

async function getReport(cmd: Command): Promise<Report> {
  return JSON.parse((await request(target(cmd), 'GET', '/report')).body) as Report;
}

const program = new Command('weft')
  .description('weft: an overlay network for containers')
  .version(VERSION, '--version', 'print the CLI version')
  .showHelpAfterError('(run with --help for usage)')
  .configureOutput({ outputError: (s, write) => write(s) });

addRouterOptions(
  program
    .command('launch')
    .description(
      'start the weft router (a Docker container when an engine answers, else a background process) and wait until it answers',
    )
    .argument('[peers...]', 'peers to connect to, host[:port]')
    .option(
      '--no-docker',
      'run the router as a plain process even when a Docker engine answers (at DOCKER_HOST or /var/run/docker.sock)',
    )
    .addOption(
      new Option('--wait <seconds>', 'how long to wait for the router to answer').default(30).argParser(Number),
    ),
).action(async (peers: string[], _o, cmd: Command) => (await import('./launch.js')).launch(cmd, peers));

withRouterLocation(
  program
    .command('connect')
    .description('add peers to connect to (and keep reconnecting to)')
    .argument('<peers...>', 'host[:port] of peers')
    .option('--replace', 'replace the current set of targets instead of adding to it'),
).action(async (peers: string[], o: { replace?: boolean }, cmd: Command) => {
  await request(target(cmd), 'POST', '/connect', { peers, replace: o.replace === true });
});

withRouterLocation(
  program
    .command('forget')
    .description('stop reconnecting to peers (existing connections stay up)')
    .argument('<peers...>', 'host[:port] of peers'),
).action(async (peers: string[], _o, cmd: Command) => {
  await request(target(cmd), 'POST', '/forget', { peers });
});

const VIEWS = ['peers', 'connections', 'targets', 'ipam', 'dns', 'policy'];
withRouterLocation(
  program
    .command('status')
    .description('show the router status: a summary, or one view')
    .argument('[view]', `one of: ${VIEWS.join(', ')}`)
    .option('--json', "as JSON: the view's part of the report (the whole report without a view)"),
).action(async (view: string | undefined, o: { json?: boolean }, cmd: Command) => {
  if (view !== undefined && !VIEWS.includes(view))
    throw new CliError(`unknown status view "${view}"; views: ${VIEWS.join(', ')}`, 2);
  if (view === 'policy') {
    const st = JSON.parse((await request(target(cmd), 'GET', '/policy/status')).body) as PolicyStatus;
    if (o.json) console.log(JSON.stringify(st, null, 2));
    else process.stdout.write(renderPolicyStatus(st));
    return;
  }
  if (view === undefined && !o.json) {
    process.stdout.write((await request(target(cmd), 'GET', '/status')).body);
    return;
  }
  const report = await getReport(cmd);
  if (o.json) {
    const part = view === undefined ? report : report[view as 'peers' | 'connections' | 'targets' | 'ipam' | 'dns'];
    console.log(JSON.stringify(part, null, 2));
    return;
  }
  const render =
    { peers: renderPeers, connections: renderConnections, targets: renderTargets, ipam: renderIpam, dns: renderDns }[
      view ?? ''
    ] ?? renderStatus;
  process.stdout.write(render(report));
});

withRouterLocation(
  program.command('report').description("the router's whole state").option('--json', 'as JSON (for scripts)'),
).action(async (o: { json?: boolean }, cmd: Command) => {
  const report = await getReport(cmd);
  if (o.json) {
    console.log(JSON.stringify(report, null, 2));
    return;
  }
  process.stdout.write(renderStatus(report));
  process.stdout.write('\nPeers:\n' + renderPeers(report));
  process.stdout.write('\nConnections:\n' + renderConnections(report));
  const routes = report.unicastRoutes.map((r) => `  ${r.dest} via ${r.via}`).join('\n');
  process.stdout.write(`\nUnicast routes:\n${routes || '  (none)'}\n`);
});

// ---- IPAM
const secs = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new CliError(`invalid --timeout "${v}": seconds`, 2);
  return n;
};
const timeoutOption = () =>
  new Option('--timeout <seconds>', "give up after this long (default: the router's --ipalloc-timeout)").argParser(
    secs,
  );

withRouterLocation(
  program
    .command('prime')
    .description('start the IPAM ring now (consensus) and wait until it is ready, printing progress')
    .addOption(timeoutOption()),
).action(async (o: { timeout?: number }, cmd: Command) => {
  const t = target(cmd);
  const q = o.timeout === undefined ? '' : `?timeout=${o.timeout}`;
  const ready = request(t, 'GET', `/ring${q}`);
  let done = false;
  const progress = (async () => {
    let last = '';
    while (!done) {
      await new Promise((r) => setTimeout(r, 1000));
      if (done) return;
      const r = await getReport(cmd).catch(() => null);
      if (r && r.ipam.state !== last && r.ipam.state !== 'ready') process.stderr.write(`${r.ipam.state}\n`);
      last = r?.ipam.state ?? last;
    }
  })();
  try {
    const r = JSON.parse((await ready).body) as { seeds: string[] };
    console.log(`IPAM ready: ring started by ${r.seeds.join(', ')}`);
  } finally {
    done = true;
    await progress;
  }
});

withRouterLocation(
  program
    .command('rmpeer')
    .description(
      'remove peers that are gone for good: take over their address ranges, drop their names, endpoints and pinned keys everywhere at once, and stop waiting for them before removed rules and services are forgotten',
    )
    .argument('<peers...>', 'peer names or nicknames'),
).action(async (peers: string[], _o, cmd: Command) => {
  for (const p of peers)
    process.stdout.write((await request(target(cmd), 'DELETE', `/peer/${encodeURIComponent(p)}`)).body);
});

const ipam = program.command('ipam').description('allocate and free addresses directly (for scripts)');
withRouterLocation(
  ipam
    .command('alloc')
    .description('allocate an address for a container')
    .argument('<container>', 'container id')
    .option('--subnet <cidr>', 'from this subnet (IPv4 or IPv6)')
    .option('--ipv6', 'an IPv6 address from the default IPv6 subnet (--ipalloc-default-subnet6)')
    .addOption(timeoutOption()),
).action(async (id: string, o: { subnet?: string; ipv6?: boolean; timeout?: number }, cmd: Command) => {
  const q = new URLSearchParams();
  if (o.subnet) q.set('subnet', o.subnet);
  if (o.ipv6) q.set('family', '6');
  if (o.timeout !== undefined) q.set('timeout', String(o.timeout));
  console.log((await request(target(cmd), 'POST', `/ip/${encodeURIComponent(id)}?${q}`)).body);
});
withRouterLocation(
  ipam
    .command('claim')
    .description('claim a given address for a container')
    .argument('<container>', 'container id')
    .argument('<ip>', 'address, optionally ip/prefix')
    .addOption(timeoutOption()),
).action(async (id: string, ip: string, o: { timeout?: number }, cmd: Command) => {
  const q = o.timeout === undefined ? '' : `?timeout=${o.timeout}`;
  console.log(
    (
      await request(
        target(cmd),
        'PUT',
        `/ip/${encodeURIComponent(id)}/${ip.split('/').map(encodeURIComponent).join('/')}${q}`,
      )
    ).body,
  );
});
withRouterLocation(
  ipam
    .command('free')
    .description("free a container's addresses (or one)")
    .argument('<container>', 'container id')
    .argument('[ip]', 'just this address'),
).action(async (id: string, ip: string | undefined, _o, cmd: Command) => {
  const r = JSON.parse(
    (await request(target(cmd), 'DELETE', `/ip/${encodeURIComponent(id)}${ip ? `/${encodeURIComponent(ip)}` : ''}`))
      .body,
  ) as { freed: string[] };
  console.log(r.freed.join(' '));
});
withRouterLocation(
  ipam.command('lookup').description('the addresses of a container').argument('<container>', 'container id'),
).action(async (id: string, _o, cmd: Command) => {
  console.log((await request(target(cmd), 'GET', `/ip/${encodeURIComponent(id)}`)).body);
});

// ---- containers
withRouterLocation(
  program
    .command('attach')
    .description('attach a container to the overlay: an ethwe interface with addresses from IPAM (or the ones given)')
    .argument('<args...>', "[ip/prefix ...] CONTAINER: a Docker container's name or id, netns:NAME or pid:N")
    .option('--subnet <cidr>', 'allocate from this subnet of the range')
    .option('-h, --hostname <fqdn>', "register this name in weft's DNS (e.g. web.weft.local)")
    .option(
      '--group <name>',
      'put the container in this security group (repeatable; Docker containers default to their weft.group label)',
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .option(
      '--gateway',
      "route the container's default traffic through this host (NAT to the outside; the host reaches it), for each family it has (IPv6: routed, or NAT66 with the router's --ipv6-nat); replaces a default route it had",
    )
    .option('--ipv4-only', 'no IPv6 address, on a router that gives containers one of each family (--ipv6)')
    .option(
      '--ipv6-only',
      'no IPv4 address: an IPv6-only container (a router run with --ipv6); its resolver asks the DNS server over IPv6',
    ),
).action(
  async (
    args: string[],
    o: {
      subnet?: string;
      hostname?: string;
      group?: string[];
      gateway?: boolean;
      ipv4Only?: boolean;
      ipv6Only?: boolean;
    },
    cmd: Command,
  ) => {
    const container = args[args.length - 1];
    const cidrs = args.slice(0, -1);
    const ep = JSON.parse(
      (
        await whileWaiting(
          target(cmd),
          request(target(cmd), 'POST', '/attach', {
            container,
            cidrs,
            subnet: o.subnet,
            hostname: o.hostname,
            groups: o.group,
            ...(o.gateway ? { gateway: true } : {}),
            ...(o.ipv4Only ? { ipv4Only: true } : {}),
            ...(o.ipv6Only ? { ipv6Only: true } : {}),
          }),
        )
      ).body,
    ) as { cidrs: string[]; cidrs6?: string[]; warning?: string };
    if (ep.warning) console.error(`weft: warning: ${ep.warning}`);
    console.log([...ep.cidrs, ...(ep.cidrs6 ?? [])].join(' '));
  },
);

withRouterLocation(
  program
    .command('detach')
    .description('detach a container and free its addresses')
    .argument('<container>', "a Docker container's name or id, netns:NAME or pid:N"),
).action(async (container: string, _o, cmd: Command) => {
  const ep = JSON.parse((await request(target(cmd), 'DELETE', `/attach/${encodeURIComponent(container)}`)).body) as {
    cidrs: string[];
    cidrs6?: string[];
  };
  console.log([...ep.cidrs, ...(ep.cidrs6 ?? [])].join(' '));
});

withRouterLocation(
  program
    .command('expose')
    .description(
      'give this host an address on the overlay (from IPAM unless given; with a router run with --ipv6, one of each family) and NAT to the outside (IPv6: routed, or NAT66 with --ipv6-nat)',
    )
    .argument('[cidr]', 'ip/prefix to use (IPv4 or IPv6)'),
).action(async (cidr: string | undefined, _o, cmd: Command) => {
  const r = JSON.parse((await request(target(cmd), 'POST', '/expose', cidr ? { cidr } : {})).body) as {
    exposed: string[];
  };
  console.log(r.exposed.join(' '));
});

withRouterLocation(
  program
    .command('hide')
    .description("remove this host's overlay address (all, or the one given)")
    .argument('[cidr]', 'ip/prefix'),
).action(async (cidr: string | undefined, _o, cmd: Command) => {
  const r = JSON.parse(
    (await request(target(cmd), 'DELETE', `/expose${cidr ? `?cidr=${encodeURIComponent(cidr)}` : ''}`)).body,
  ) as { hidden: string[] };
  console.log(r.hidden.join(' '));
});

withRouterLocation(
  program
    .command('dns-add')
    .description('register a name for a container (its weft addresses, or the ones given)')
    .argument('<args...>', '[ip ...] CONTAINER')
    .requiredOption('-h, --hostname <fqdn>', 'the name, in the weft domain'),
).action(async (args: string[], o: { hostname: string }, cmd: Command) => {
  const container = args[args.length - 1];
  const r = JSON.parse(
    (
      await request(target(cmd), 'PUT', `/name/${encodeURIComponent(container)}`, {
        fqdn: o.hostname,
        ips: args.slice(0, -1),
      })
    ).body,
  ) as { fqdn: string; ips: string[] };
  console.log(`${r.fqdn} ${r.ips.join(' ')}`);
});

withRouterLocation(
  program
    .command('dns-remove')
    .description("remove a container's names (all, or one name or address)")
    .argument('<args...>', '[ip] CONTAINER')
    .option('-h, --hostname <fqdn>', 'only this name'),
).action(async (args: string[], o: { hostname?: string }, cmd: Command) => {
  const container = args[args.length - 1];
  const q = new URLSearchParams();
  if (o.hostname) q.set('fqdn', o.hostname);
  if (args.length > 1) q.set('ip', args[0]);
  const r = JSON.parse((await request(target(cmd), 'DELETE', `/name/${encodeURIComponent(container)}?${q}`)).body) as {
    removed: number;
  };
  console.log(`${r.removed} name(s) removed`);
});

withRouterLocation(
  program
    .command('dns-lookup')
    .description("the addresses weft's DNS has for a name")
    .argument('<name>', 'e.g. web.weft.local'),
).action(async (name: string, _o, cmd: Command) => {
  const r = JSON.parse((await request(target(cmd), 'GET', `/name/${encodeURIComponent(name)}`)).body) as {
    ips: string[];
  };
  console.log(r.ips.join('\n'));
});

withRouterLocation(
  program
    .command('dns-args')
    .description("the docker run flags that make a container use weft's DNS (--dns, --dns-search)"),
).action(async (_o, cmd: Command) => {
  const r = await getReport(cmd);
  if (!r.dns.address)
    throw new CliError("weft's DNS is not running on this host (launched with --no-dns, or without the bridge)");
  console.log(`--dns=${r.dns.address.replace(/:53$/, '')} --dns-search=${r.dns.domain.replace(/\.$/, '')}`);
});

withRouterLocation(program.command('ps').description('containers attached on this host: id, MAC, addresses')).action(
  async (_o, cmd: Command) => {
    process.stdout.write(renderPs(await getReport(cmd)));
  },
);

// ---- security groups
const policy = program.command('policy').description('security groups: which containers may talk to which');
withRouterLocation(
  policy
    .command('allow')
    .description(
      'add a rule: members of --to accept traffic from --from (with --egress: members of --from may send to --to)',
    )
    .requiredOption(
      '--to <group>',
      'the group (or container:ID) the rule opens; with --egress: a group, container:ID, CIDR or any',
    )
    .requiredOption(
      '--from <source>',
      'a group, container:ID, CIDR or any; with --egress: the group (or container:ID) the rule opens',
    )
    .option('--proto <proto>', 'tcp, udp, icmp or any', 'any')
    .option('--port <n[-m]>', 'a port or range (tcp and udp)')
    .option('--egress', 'an egress rule (limits what members of --from may send)'),
).action(async (o: { to: string; from: string; proto: string; port?: string; egress?: boolean }, cmd: Command) => {
  const r = JSON.parse(
    (
      await request(target(cmd), 'POST', '/policy', {
        to: o.to,
        from: o.from,
        proto: o.proto,
        port: o.port,
        egress: o.egress === true,
      })
    ).body,
  ) as { id: string; text: string };
  console.log(`${r.id} ${r.text}`);
});
withRouterLocation(
  policy.command('list').description('the rules in force in the mesh').option('--json', 'as JSON'),
).action(async (o: { json?: boolean }, cmd: Command) => {
  const r = JSON.parse((await request(target(cmd), 'GET', '/policy')).body) as {
    rules: { id: string; text: string }[];
  };
  if (o.json) console.log(JSON.stringify(r.rules, null, 2));
  else
    process.stdout.write(
      r.rules.length === 0
        ? 'no rules: every container accepts everything\n'
        : r.rules.map((x) => `${x.id} ${x.text}`).join('\n') + '\n',
    );
});
withRouterLocation(
  policy
    .command('remove')
    .description('remove a rule, everywhere (flows it allowed are cut)')
    .argument('<id>', 'rule id (weft policy list)'),
).action(async (id: string, _o, cmd: Command) => {
  const r = JSON.parse((await request(target(cmd), 'DELETE', `/policy/${encodeURIComponent(id)}`)).body) as {
    id: string;
    text: string;
  };
  console.log(`removed ${r.id} ${r.text}`);
});
withRouterLocation(
  policy
    .command('check')
    .description('whether a flow is allowed, and which rule decides (exit 0 allowed, 1 denied)')
    .argument('<from>', 'sender: a container (name, id) or an address')
    .argument('<to>', 'receiver: a container (name, id) or an address')
    .argument('[proto/port]', 'e.g. tcp/5432, udp/53, icmp', 'icmp')
    .option('--ipv6', 'containers by their IPv6 addresses (implied when either side is an IPv6 address)')
    .option('--json', 'as JSON'),
).action(async (from: string, to: string, what: string, o: { json?: boolean; ipv6?: boolean }, cmd: Command) => {
  const [proto, port] = what.split('/');
  const q = new URLSearchParams({ from, to, proto });
  if (port !== undefined) q.set('port', port);
  if (o.ipv6) q.set('family', '6');
  const r = JSON.parse((await request(target(cmd), 'GET', `/policy/check?${q}`)).body) as {
    allowed: boolean;
    summary: string;
  };
  console.log(o.json ? JSON.stringify(r, null, 2) : r.summary);
  if (!r.allowed) process.exitCode = 1;
});

// ---- services
const service = program
  .command('service')
  .description("services: a virtual IP per service, balanced over its backends at each client's host");
const collect = (v: string, prev: string[]) => [...prev, v];
withRouterLocation(
  service
    .command('create')
    .description(
      'create a service: NAME.<domain> resolves to its VIP; connections to the VIP (any port) go to one live backend',
    )
    .argument('<name>', 'the service name (a DNS label)')
    .option('--group <group>', 'backends: the live members of this security group, anywhere in the mesh')
    .option(
      '--backend <container>',
      'a backend container (name, id, netns:NAME ...); repeat for more',
      collect,
      [] as string[],
    )
    .option('--affinity <kind>', 'none (spread every connection) or client (a client stays on one backend)', 'none')
    .option('--check <tcp:PORT>', 'probe each backend from its own host; failing ones take no new connections')
    .option('--json', 'as JSON'),
).action(
  async (
    name: string,
    o: { group?: string; backend: string[]; affinity: string; check?: string; json?: boolean },
    cmd: Command,
  ) => {
    const r = JSON.parse(
      (
        await request(target(cmd), 'POST', '/services', {
          name,
          group: o.group,
          backends: o.backend.length > 0 ? o.backend : undefined,
          affinity: o.affinity,
          check: o.check,
        })
      ).body,
    ) as { name: string; vip: string; vip6?: string; dnsName: string };
    console.log(o.json ? JSON.stringify(r, null, 2) : `${r.name} ${r.vip}${r.vip6 ? ` ${r.vip6}` : ''} (${r.dnsName})`);
  },
);
withRouterLocation(
  service
    .command('remove')
    .description('remove a service, everywhere (its VIP refuses connections from then on)')
    .argument('<name>', 'the service name'),
).action(async (name: string, _o, cmd: Command) => {
  const r = JSON.parse((await request(target(cmd), 'DELETE', `/services/${encodeURIComponent(name)}`)).body) as {
    name: string;
    vip: string;
  };
  console.log(`removed ${r.name} ${r.vip}`);
});
withRouterLocation(
  service.command('list').description('the services in the mesh, with their backends').option('--json', 'as JSON'),
).action(async (o: { json?: boolean }, cmd: Command) => {
  const r = JSON.parse((await request(target(cmd), 'GET', '/services')).body) as {
    range: string;
    services: ServiceDetail[];
  };
  if (o.json) {
    console.log(JSON.stringify(r.services, null, 2));
    return;
  }
  if (r.services.length === 0) {
    console.log(`no services (VIPs come from ${r.range})`);
    return;
  }
  const rows = r.services.map((s) => [
    s.name,
    s.vip6 ? `${s.vip} ${s.vip6}` : s.vip,
    s.group !== undefined ? `group ${s.group}` : s.backends!.join(','),
    upColumn(s.live),
    s.affinity,
    s.check ? `tcp:${s.check.port}` : '-',
    s.served ? '' : `(${s.conflict})`,
  ]);
  process.stdout.write(table([['NAME', 'VIP', 'BACKENDS FROM', 'UP', 'AFFINITY', 'CHECK', ''], ...rows]));
});
withRouterLocation(
  service
    .command('show')
    .description('one service: VIP, DNS name, backends with host, health and flows from this host')
    .argument('<name>', 'the service name')
    .option('--json', 'as JSON'),
).action(async (name: string, o: { json?: boolean }, cmd: Command) => {
  const s = JSON.parse(
    (await request(target(cmd), 'GET', `/services/${encodeURIComponent(name)}`)).body,
  ) as ServiceDetail;
  if (o.json) {
    console.log(JSON.stringify(s, null, 2));
    return;
  }
  const lines = [
    `${s.name}: VIP ${s.vip}${s.vip6 ? ` and ${s.vip6}` : ''}, ${s.dnsName}${s.served ? '' : ` (${s.conflict})`}`,
    `backends from ${s.group !== undefined ? `group ${s.group}` : `containers ${s.backends!.join(', ')}`}; affinity ${s.affinity}; check ${s.check ? `tcp:${s.check.port}` : 'none'}`,
  ];
  if (s.live.length === 0) lines.push('no live backend: connections to the VIP are refused');
  else
    lines.push(
      table([
        ['BACKEND', 'ADDRESS', 'HOST', 'HEALTH', 'FLOWS FROM HERE'],
        ...s.live.map((b) => [
          b.container,
          [b.addr, b.addr6].filter((a) => a !== undefined).join(' '),
          b.host ?? b.peer,
          b.health6 !== undefined && b.addr !== undefined && b.health6 !== b.health
            ? `${b.health} (IPv6 ${b.health6})`
            : b.health,
          String(b.flowsFromHere),
        ]),
      ]).trimEnd(),
    );
  console.log(lines.join('\n'));
});

/** Backends up of all; with IPv6 checks that differ, how many are up over IPv6 too. */
function upColumn(live: { health: string; health6?: string; addr6?: string }[]): string {
  const up = `${live.filter((b) => b.health !== 'failing').length}/${live.length}`;
  const six = live.filter((b) => b.addr6 !== undefined && b.health6 !== undefined);
  const up6 = six.filter((b) => b.health6 !== 'failing').length;
  return six.some((b) => b.health6 !== b.health) ? `${up} (IPv6 ${up6}/${six.length})` : up;
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

async function stopRouter(dataDir: string): Promise<void> {
  const info = readRouterInfo(dataDir);
  // A router launched as a container is stopped through Docker: its restart policy would bring back a killed one.
  if (!info || info.container) {
    const { ROUTER_CONTAINER, removeRouterContainer } = await import('./router-container.js');
    if (await removeRouterContainer()) {
      console.log(`weft router container ${ROUTER_CONTAINER} stopped and removed`);
      return;
    }
  }
  if (!info) throw new CliError(`no weft router is running (data dir ${dataDir})`);
  process.kill(info.pid, 'SIGTERM');
  const deadline = Date.now() + 10_000;
  while (isAlive(info.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (isAlive(info.pid)) {
    process.kill(info.pid, 'SIGKILL');
    console.log(`weft router did not stop within 10s; killed (pid ${info.pid})`);
  } else {
    console.log(`weft router stopped (pid ${info.pid})`);
  }
}

withRouterLocation(program.command('stop').description('stop the router')).action(async (_o, cmd: Command) =>
  stopRouter(target(cmd).dataDir),
);

withRouterLocation(
  program
    .command('reset')
    .description(
      "leave for good: hand this peer's address ranges to a live peer, stop the router, delete its identity and IPAM data",
    )
    .option('--force', 'also when no router runs (the ranges are then not handed over)'),
).action(async (o: { force?: boolean }, cmd: Command) => {
  const t = target(cmd);
  if (readRouterInfo(t.dataDir)) {
    const r = JSON.parse((await request(t, 'DELETE', '/peer')).body) as { heir: string | null };
    console.log(r.heir ? `address ranges handed to ${r.heir}` : 'no live peer to hand the address ranges to');
    const removed = await request(t, 'POST', '/datapath/remove').catch((err: Error) => {
      console.error(`weft: could not remove the bridge and firewall rules: ${err.message}`);
      return null;
    });
    if (removed) {
      const ovs = (JSON.parse(removed.body) as { ovsBridges?: string[] }).ovsBridges ?? [];
      console.log(
        `removed the weft bridge, VXLAN device and firewall rules${ovs.length > 0 ? `, and the OVS bridge ${ovs.join(', ')} with its flows` : ''}`,
      );
    }
    // Give the hand-over a moment to leave on the wire before the router goes.
    await new Promise((res) => setTimeout(res, 500));
    await stopRouter(t.dataDir);
  } else if (!o.force) {
    throw new CliError(
      `no weft router is running (data dir ${t.dataDir}); weft reset --force deletes the data without handing over its ranges`,
    );
  } else if (await (await import('./router-container.js')).removeRouterContainer()) {
    console.log(`removed the weft router container ${(await import('./router-container.js')).ROUTER_CONTAINER}`);
  }
  for (const f of STATE_FILES) rmSync(join(t.dataDir, f), { recursive: true, force: true });
  console.log(`removed weft's state from ${t.dataDir}`);
});

program
  .command('setup-cni')
  .description(
    "install weft's CNI plugin and a network config for container runtimes (Kubernetes, podman); the runtime's containers get addresses from the local router, with this host as their gateway",
  )
  .option('--bin-dir <dir>', 'where the runtime looks for plugins', '/opt/cni/bin')
  .option('--conf-dir <dir>', 'where the runtime looks for network configs', '/etc/cni/net.d')
  .option(
    '--router-addr <addr>',
    "the router's API as the plugin reaches it (HOST:PORT or unix:/PATH)",
    '127.0.0.1:6784',
  )
  .option('--name <name>', "the network's name", 'weft')
  .option('--subnet <cidr>', "allocate from this subnet of weft's range (default: the router's default subnet)")
  .option('--dns-domain <domain>', 'register pods (K8S_POD_NAME) under this domain', 'weft.local')
  .option(
    '--ip-families <list>',
    "the pods' address families: IPv4, IPv6 (IPv6-only pods; the router needs --ipv6) or IPv4,IPv6 (default: each family the router carries)",
  )
  .option(
    '--chain <plugins>',
    'reference plugins chained after weft when the bin dir has them (comma-separated; "" for none)',
    'portmap,bandwidth',
  )
  .action(
    async (o: {
      binDir: string;
      confDir: string;
      routerAddr: string;
      name: string;
      subnet?: string;
      dnsDomain: string;
      ipFamilies?: string;
      chain: string;
    }) => {
      const { setupCni } = await import('./setup-cni.js');
      let r;
      try {
        const { ipFamilies, ...rest } = o;
        r = setupCni({
          ...rest,
          ...(ipFamilies !== undefined ? { ipFamilies: ipFamilies.split(',').map((f) => f.trim()) } : {}),
          chain: o.chain
            .split(',')
            .map((c) => c.trim())
            .filter(Boolean),
        });
      } catch (err) {
        throw new CliError(`cannot set up CNI: ${(err as Error).message}`);
      }
      console.log(`installed ${r.plugin} (${r.kind})`);
      console.log(`wrote ${r.conflist}${r.chained.length > 0 ? ` (chaining ${r.chained.join(', ')})` : ''}`);
      if (r.skipped.length > 0) console.log(`not chained (not in ${o.binDir}): ${r.skipped.join(', ')}`);
    },
  );

withRouterLocation(
  program.command('version').description('print the versions of the CLI and the running router'),
).action(async (_o, cmd: Command) => {
  console.log(`weft CLI ${VERSION}`);
  const info = readRouterInfo(target(cmd).dataDir);
  console.log(info ? `weft router ${info.version} (pid ${info.pid})` : 'weft router: not running');
});

export async function runCommands(): Promise<void> {
  try {
    await program.parseAsync();
  } catch (err) {
    exitWithError(err);
  }
}
