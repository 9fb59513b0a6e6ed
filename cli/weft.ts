#!/usr/bin/env node
// The weft command line. Every command that needs the router finds it through
// --data-dir / WEFT_DATA_DIR (or --http-addr / WEFT_HTTP_ADDR) and says so in
// one line, exiting non-zero, when none runs.
import { Command, Option } from 'commander';
import { addRouterOptions, DEFAULT_DATA_DIR } from '../router/options.js';
import { VERSION, renderConnections, renderPeers, renderStatus, renderTargets, type Report } from '../router/report.js';
import { CliError, isAlive, readRouterInfo, request, type Target } from './client.js';
import { launch } from './launch.js';

function withRouterLocation(cmd: Command): Command {
  return cmd
    .addOption(new Option('--data-dir <dir>', 'data directory of the router to talk to').env('WEFT_DATA_DIR').default(DEFAULT_DATA_DIR))
    .addOption(new Option('--http-addr <ip:port>', 'talk to the router API at this address instead').env('WEFT_HTTP_ADDR'));
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
    .description('start the weft router (as a background process) and wait until it answers')
    .argument('[peers...]', 'peers to connect to, host[:port]')
    .option('--no-docker', 'run the router as a plain process (the only mode until Docker support lands)')
    .addOption(new Option('--wait <seconds>', 'how long to wait for the router to answer').default(30).argParser(Number)),
).action(async (peers: string[], _o, cmd: Command) => launch(cmd, peers));

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
  program.command('forget').description('stop reconnecting to peers (existing connections stay up)').argument('<peers...>', 'host[:port] of peers'),
).action(async (peers: string[], _o, cmd: Command) => {
  await request(target(cmd), 'POST', '/forget', { peers });
});

const VIEWS = ['peers', 'connections', 'targets'];
withRouterLocation(
  program
    .command('status')
    .description('show the router status: a summary, or one view')
    .argument('[view]', `one of: ${VIEWS.join(', ')}`)
    .option('--json', 'print the full report as JSON'),
).action(async (view: string | undefined, o: { json?: boolean }, cmd: Command) => {
  if (view !== undefined && !VIEWS.includes(view)) throw new CliError(`unknown status view "${view}"; views: ${VIEWS.join(', ')}`, 2);
  const report = await getReport(cmd);
  if (o.json) {
    console.log(JSON.stringify(report, null, 2));
    return;
  }
  const render = { peers: renderPeers, connections: renderConnections, targets: renderTargets }[view ?? ''] ?? renderStatus;
  process.stdout.write(render(report));
});

withRouterLocation(
  program.command('report').description('the router\'s whole state').option('--json', 'as JSON (for scripts)'),
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

withRouterLocation(program.command('stop').description('stop the router')).action(async (_o, cmd: Command) => {
  const { dataDir } = target(cmd);
  const info = readRouterInfo(dataDir);
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
});

withRouterLocation(program.command('version').description('print the versions of the CLI and the running router')).action(
  async (_o, cmd: Command) => {
    console.log(`weft CLI ${VERSION}`);
    const info = readRouterInfo(target(cmd).dataDir);
    console.log(info ? `weft router ${info.version} (pid ${info.pid})` : 'weft router: not running');
  },
);

try {
  await program.parseAsync();
} catch (err) {
  if (err instanceof CliError) {
    console.error(`weft: ${err.message}`);
    process.exit(err.exitCode);
  }
  console.error(`weft: ${(err as Error).message}`);
  process.exit(1);
}
