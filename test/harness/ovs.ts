// One Open vSwitch per namespace host (Debian's openvswitch-switch, userspace
// netdev datapath: this kernel has no openvswitch module), in its own run
// directory: ovsdb-server and ovs-vswitchd started inside the host's namespace
// and stopped by the PIDs in their pidfiles. Userspace tunnelling needs the
// underlay in an OVS bridge: the host's uplink goes into `br-phy` (netdev,
// the NORMAL learning switch), which takes over the host's underlay address
// (../shared/reference/measurements.md, "Open vSwitch works here in userspace").
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { must, run, type ExecResult } from './exec.js';

const SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema';

export function ovsInstalled(): boolean {
  return existsSync(SCHEMA) && existsSync('/usr/sbin/ovs-vswitchd');
}

export class HostOvs {
  constructor(
    readonly ns: string,
    readonly dir: string,
  ) {}

  get db(): string {
    return `unix:${join(this.dir, 'db.sock')}`;
  }

  /** Router options for a weft router using this OVS. */
  get routerArgs(): string[] {
    return ['--datapath', 'ovs', '--ovsdb', this.db, '--ovs-datapath', 'netdev'];
  }

  private get env(): NodeJS.ProcessEnv {
    return { ...process.env, OVS_RUNDIR: this.dir, OVS_LOGDIR: this.dir, OVS_DBDIR: this.dir };
  }

  /** An OVS tool (ovs-vsctl, ovs-ofctl, ovs-appctl) against this OVS. */
  tool(cmd: 'ovs-vsctl' | 'ovs-ofctl' | 'ovs-appctl', args: string[]): Promise<ExecResult> {
    const pre = cmd === 'ovs-vsctl' ? [`--db=${this.db}`] : [];
    return run('ip', ['netns', 'exec', this.ns, cmd, ...pre, ...args], { env: this.env });
  }

  async vsctl(args: string[]): Promise<string> {
    const r = await this.tool('ovs-vsctl', args);
    if (r.code !== 0) throw new Error(`ovs-vsctl ${args.join(' ')}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** The flows of a bridge as ovs-ofctl prints them (without the statistics that change). */
  async flows(bridge: string): Promise<string[]> {
    const r = await this.tool('ovs-ofctl', ['-O', 'OpenFlow13', '--no-stats', 'dump-flows', bridge]);
    if (r.code !== 0) throw new Error(`ovs-ofctl dump-flows ${bridge}: ${r.stderr.trim()}`);
    return r.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.length > 0 && !l.startsWith('OFPST_FLOW'))
      .sort();
  }

  /** Starts ovsdb-server and ovs-vswitchd inside the namespace, then moves the uplink and its address into br-phy. */
  async start(uplink: string, cidr: string): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    const d = this.dir;
    await must('ovsdb-tool', ['create', join(d, 'conf.db'), SCHEMA]);
    const inNs = (cmd: string, args: string[]) =>
      run('ip', ['netns', 'exec', this.ns, cmd, ...args], { env: this.env });
    const started = async (what: string, r: ExecResult) => {
      if (r.code !== 0) throw new Error(`${what} did not start: ${r.stderr.trim()}`);
    };
    await started(
      'ovsdb-server',
      await inNs('ovsdb-server', [
        `--remote=punix:${join(d, 'db.sock')}`,
        `--pidfile=${join(d, 'ovsdb-server.pid')}`,
        '--detach',
        `--log-file=${join(d, 'ovsdb-server.log')}`,
        `--unixctl=${join(d, 'ovsdb.ctl')}`,
        join(d, 'conf.db'),
      ]),
    );
    await this.vsctl(['--no-wait', 'init']);
    await started(
      'ovs-vswitchd',
      await inNs('ovs-vswitchd', [
        this.db,
        `--pidfile=${join(d, 'ovs-vswitchd.pid')}`,
        '--detach',
        `--log-file=${join(d, 'ovs-vswitchd.log')}`,
        `--unixctl=${join(d, 'vswitchd.ctl')}`,
      ]),
    );
    await this.vsctl([
      'add-br',
      'br-phy',
      '--',
      'set',
      'bridge',
      'br-phy',
      'datapath_type=netdev',
      '--',
      'add-port',
      'br-phy',
      uplink,
    ]);
    await must('ip', ['-n', this.ns, 'addr', 'flush', 'dev', uplink]);
    // OVS reads the uplink through AF_PACKET, so the kernel sees its frames too, and by default
    // would answer ARP for the host's address with the uplink's own MAC: peers then send to a MAC
    // OVS does not take for its tunnels, and VXLAN from them is lost. Only br-phy answers.
    await must('ip', ['netns', 'exec', this.ns, 'sysctl', '-qw', `net.ipv4.conf.${uplink}.arp_ignore=8`]);
    await must('ip', ['-n', this.ns, 'addr', 'add', cidr, 'dev', 'br-phy']);
    await must('ip', ['-n', this.ns, 'link', 'set', 'br-phy', 'up']);
  }

  /** Stops both daemons by the PIDs in their pidfiles. */
  stop(): void {
    for (const name of ['ovs-vswitchd', 'ovsdb-server']) {
      try {
        const pid = Number(readFileSync(join(this.dir, `${name}.pid`), 'utf8').trim());
        if (pid > 0) process.kill(pid, 'SIGKILL');
      } catch {
        /* not started, or gone */
      }
    }
  }
}
