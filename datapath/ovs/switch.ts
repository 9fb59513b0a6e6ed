// weft's OVS bridge: made (or adopted) through OVSDB, programmed through
// OpenFlow with weft as its controller. weft does not start Open vSwitch; when
// ovsdb-server or ovs-vswitchd does not answer, start() says which and where.
// The bridge is fail-mode secure: while the router is away (killed,
// restarting), OVS keeps forwarding with the flows it has; the restarted router
// reads them back and changes only what differs, so traffic has no gap.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { OpenFlowConnection } from './ofconn.js';
import { CookieKind, KIND_MASK, PORT_BRIDGE, PORT_TUNNEL, cookieFor, floodDestinations } from './flows.js';
import { flowText, type FlowSpec } from './openflow.js';
import {
  OvsdbClient,
  OvsdbError,
  map,
  mapObject,
  named,
  parseOvsdbTarget,
  set,
  setItems,
  uuid,
  uuidOf,
  type Json,
} from './ovsdb.js';

/** The veth between weft's Linux bridge and its OVS bridge: this end is the OVS port. */
const OVS_PORT_DEV = 'weftovs-dp';
const TUNNEL_PORT = 'weftovs-vx';
/** external_ids mark of what weft made (reset removes only that). */
const OWNED = { key: 'weft', value: 'owned' };

export type OvsDatapathType = 'system' | 'netdev';

export interface OvsConfig {
  /** unix:PATH of ovsdb-server. */
  ovsdb: string;
  bridge: string;
  datapathType: OvsDatapathType;
  vxlanPort: number;
}

/** Whether this kernel has the openvswitch module (the default datapath type follows). */
export function defaultOvsDatapathType(): OvsDatapathType {
  return existsSync('/sys/module/openvswitch') ? 'system' : 'netdev';
}

export class OvsSwitch {
  private conn: OpenFlowConnection | null = null;
  private reconnecting: NodeJS.Timeout | null = null;
  private stopped = false;
  readonly stats = { flowsAdded: 0, flowsRemoved: 0, reconnects: 0 };
  lastError: string | null = null;
  datapathId = 0n;

  constructor(
    readonly config: OvsConfig,
    private readonly log: { warn(o: object, m: string): void; info(o: object, m: string): void },
    /** Called after a lost OpenFlow connection is back (the datapath re-programs: a re-made bridge has no flows). */
    private readonly onReconnect: () => void = () => undefined,
  ) {}

  /** The controller socket OVS listens on for weft (next to OVSDB's socket). */
  get controllerPath(): string {
    const t = parseOvsdbTarget(this.config.ovsdb);
    if (!('path' in t))
      throw new OvsdbError('--ovsdb must be unix:PATH for the OVS datapath (the controller socket goes next to it)');
    return join(dirname(t.path), `${this.config.bridge}.weft.ofp`);
  }

  async start(): Promise<void> {
    const db = new OvsdbClient(this.config.ovsdb);
    await db.connect();
    try {
      await this.ensureBridge(db);
    } finally {
      db.close();
    }
    await this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.reconnecting) clearTimeout(this.reconnecting);
    this.conn?.close();
  }

  get connected(): boolean {
    return !!this.conn && !this.conn.closed;
  }

  private async connect(): Promise<void> {
    const conn = new OpenFlowConnection();
    // vswitchd opens the controller socket once it has applied the bridge: a moment after start.
    let lastErr: Error | null = null;
    for (let i = 0; i < 25; i++) {
      try {
        await conn.connect(this.controllerPath);
        lastErr = null;
        break;
      } catch (err) {
        lastErr = err as Error;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    if (lastErr)
      throw new Error(
        `ovs-vswitchd does not answer as the OpenFlow switch of ${this.config.bridge}: ${lastErr.message}`,
      );
    this.datapathId = conn.datapathId;
    conn.on('down', (reason: string) => {
      this.lastError = reason;
      this.log.warn({ reason }, 'OpenFlow connection to OVS lost; reconnecting');
      this.scheduleReconnect();
    });
    this.conn = conn;
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.reconnecting) return;
    this.reconnecting = setTimeout(() => {
      this.reconnecting = null;
      this.stats.reconnects++;
      // Through OVSDB first: the bridge may be gone (deleted underneath, or OVS restarted with a fresh database).
      this.start().then(
        () => {
          this.lastError = null;
          this.onReconnect();
        },
        (err: Error) => {
          this.lastError = err.message;
          this.scheduleReconnect();
        },
      );
    }, 2000);
    this.reconnecting.unref();
  }

  /** Every flow in the bridge. */
  async flows(): Promise<FlowSpec[]> {
    if (!this.connected)
      throw new Error(
        `not connected to the OVS bridge ${this.config.bridge}${this.lastError ? ` (${this.lastError})` : ''}`,
      );
    return this.conn!.flows();
  }

  /** The peer addresses the installed flood flow sends to (after a restart: the peers on OVS). */
  async floodDestinations(): Promise<string[]> {
    return floodDestinations(await this.flows());
  }

  /**
   * Brings the bridge's flows to exactly `desired`: what differs is removed and added in one
   * batch closed by a barrier; what is already there is not touched (no gap for its traffic).
   */
  async program(desired: FlowSpec[]): Promise<{ added: number; removed: number }> {
    const have = await this.flows();
    const key = (f: FlowSpec) => `${f.cookie.toString(16)} table=${f.tableId} ${flowText(f)}`;
    const want = new Map(desired.map((f) => [key(f), f]));
    const haveKeys = new Set(have.map(key));
    const remove = have.filter((f) => !want.has(key(f)));
    const add = [...want].filter(([k]) => !haveKeys.has(k)).map(([, f]) => f);
    // A flow whose cookie changed but whose match did not is replaced by the add (same match and priority).
    const added = new Set(add.map((f) => `${f.tableId} ${flowText({ ...f, actions: [] })}`));
    const removeStrict = remove.filter((f) => !added.has(`${f.tableId} ${flowText({ ...f, actions: [] })}`));
    await this.conn!.apply(removeStrict, add);
    this.stats.flowsAdded += add.length;
    this.stats.flowsRemoved += remove.length;
    return { added: add.length, removed: remove.length };
  }

  /** Packets counted by these peers' heartbeat flows (flows.ts: a cookie per peer). */
  async heartbeatCounts(peers: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (!this.connected) return out;
    const peerOf = new Map(peers.map((p) => [cookieFor(CookieKind.Heartbeat, p), p]));
    const flows = await this.conn!.flows(BigInt(CookieKind.Heartbeat) << 56n, KIND_MASK);
    for (const f of flows) {
      const peer = peerOf.get(f.cookie);
      if (peer) out.set(peer, Number(f.packets));
    }
    return out;
  }

  // ---- OVSDB

  private async ensureBridge(db: OvsdbClient): Promise<void> {
    const roots = await db.select('Open_vSwitch', ['_uuid', 'bridges', 'next_cfg']);
    if (roots.length !== 1)
      throw new OvsdbError(
        `OVSDB at ${this.config.ovsdb} has ${roots.length} Open_vSwitch rows: initialise it (ovs-vsctl init)`,
      );
    const root = uuidOf(roots[0]._uuid)!;
    const [existing] = await db.select(
      'Bridge',
      ['_uuid', 'datapath_type', 'fail_mode', 'controller', 'external_ids', 'ports', 'protocols'],
      [['name', '==', this.config.bridge]],
    );
    const ops: Record<string, Json>[] = [];
    if (existing) {
      if (mapObject(existing.external_ids)[OWNED.key] !== OWNED.value) {
        throw new OvsdbError(
          `an OVS bridge called ${this.config.bridge} exists and weft did not make it: choose another with --ovs-bridge, or remove it (ovs-vsctl del-br ${this.config.bridge})`,
        );
      }
      if (await this.bridgeIsRight(db, existing)) return this.waitApplied(db, null);
      this.log.info({ bridge: this.config.bridge }, 'OVS bridge has other settings than asked; making it again');
      ops.push({
        op: 'mutate',
        table: 'Open_vSwitch',
        where: [['_uuid', '==', uuid(root)]],
        mutations: [['bridges', 'delete', set([existing._uuid])]],
      });
    }
    ops.push(
      {
        op: 'insert',
        table: 'Interface',
        row: { name: OVS_PORT_DEV, ofport_request: PORT_BRIDGE },
        'uuid-name': 'ifbr',
      },
      { op: 'insert', table: 'Port', row: { name: OVS_PORT_DEV, interfaces: named('ifbr') }, 'uuid-name': 'portbr' },
      {
        op: 'insert',
        table: 'Interface',
        row: { name: TUNNEL_PORT, type: 'vxlan', ofport_request: PORT_TUNNEL, options: map(this.tunnelOptions()) },
        'uuid-name': 'iftun',
      },
      { op: 'insert', table: 'Port', row: { name: TUNNEL_PORT, interfaces: named('iftun') }, 'uuid-name': 'porttun' },
      { op: 'insert', table: 'Controller', row: { target: `punix:${this.controllerPath}` }, 'uuid-name': 'ctl' },
      {
        op: 'insert',
        table: 'Bridge',
        row: {
          name: this.config.bridge,
          datapath_type: this.config.datapathType,
          fail_mode: 'secure',
          protocols: set(['OpenFlow13']),
          controller: named('ctl'),
          ports: set([named('portbr'), named('porttun')]),
          external_ids: map({ [OWNED.key]: OWNED.value }),
        },
        'uuid-name': 'br',
      },
      {
        op: 'mutate',
        table: 'Open_vSwitch',
        where: [['_uuid', '==', uuid(root)]],
        mutations: [['bridges', 'insert', set([named('br')])]],
      },
    );
    ops.push({
      op: 'mutate',
      table: 'Open_vSwitch',
      where: [['_uuid', '==', uuid(root)]],
      mutations: [['next_cfg', '+=', 1]],
    });
    ops.push({ op: 'select', table: 'Open_vSwitch', where: [['_uuid', '==', uuid(root)]], columns: ['next_cfg'] });
    const r = await db.transact(ops);
    const next = Number(((r[r.length - 1] as { rows: { next_cfg: number }[] }).rows[0] ?? { next_cfg: 0 }).next_cfg);
    this.log.info({ bridge: this.config.bridge, datapathType: this.config.datapathType }, 'OVS bridge made');
    await this.waitApplied(db, next);
  }

  private tunnelOptions(): Record<string, string> {
    return { remote_ip: 'flow', key: 'flow', dst_port: String(this.config.vxlanPort) };
  }

  /** Whether an existing bridge of ours has exactly the settings asked (then it is adopted as it is). */
  private async bridgeIsRight(db: OvsdbClient, br: Record<string, Json>): Promise<boolean> {
    if (br.datapath_type !== this.config.datapathType || br.fail_mode !== 'secure') return false;
    const ctl = setItems(br.controller)
      .map((c) => uuidOf(c))
      .filter((c): c is string => !!c);
    if (ctl.length !== 1) return false;
    const [c] = await db.select('Controller', ['target'], [['_uuid', '==', uuid(ctl[0])]]);
    if (c?.target !== `punix:${this.controllerPath}`) return false;
    const ifaces = await db.select('Interface', ['name', 'type', 'options', 'ofport'], [['name', '==', OVS_PORT_DEV]]);
    const tun = await db.select('Interface', ['name', 'type', 'options', 'ofport'], [['name', '==', TUNNEL_PORT]]);
    const portNames = new Set<string>();
    for (const p of setItems(br.ports)) {
      const [row] = await db.select('Port', ['name'], [['_uuid', '==', p]]);
      if (row) portNames.add(String(row.name));
    }
    if (!portNames.has(OVS_PORT_DEV) || !portNames.has(TUNNEL_PORT) || ifaces.length !== 1 || tun.length !== 1)
      return false;
    const o = mapObject(tun[0].options);
    const want = this.tunnelOptions();
    return (
      tun[0].type === 'vxlan' &&
      Object.keys(want).every((k) => o[k] === want[k]) &&
      Number(ifaces[0].ofport) === PORT_BRIDGE &&
      Number(tun[0].ofport) === PORT_TUNNEL
    );
  }

  /** Waits for ovs-vswitchd to apply the configuration; says what is missing if it does not. */
  private async waitApplied(db: OvsdbClient, next: number | null): Promise<void> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const [root] = await db.select('Open_vSwitch', ['cur_cfg', 'next_cfg']);
      const cur = Number(root?.cur_cfg ?? 0);
      const target = next ?? Number(root?.next_cfg ?? 0);
      if (cur >= target) break;
      if (Date.now() > deadline) {
        throw new OvsdbError(
          `ovs-vswitchd has not applied the configuration within 5 s (ovsdb-server answers at ${this.config.ovsdb}, but cur_cfg stays at ${cur} < ${target}): is ovs-vswitchd running?`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const rows = await db.select('Interface', ['name', 'error', 'ofport'], [['name', '==', OVS_PORT_DEV]]);
    const tun = await db.select('Interface', ['name', 'error', 'ofport'], [['name', '==', TUNNEL_PORT]]);
    for (const r of [...rows, ...tun]) {
      const err = setItems(r.error)[0];
      if (typeof err === 'string' && err.length > 0)
        throw new OvsdbError(`OVS cannot use port ${String(r.name)} of ${this.config.bridge}: ${err}`);
    }
  }

  /** For reset: every bridge weft made in this OVSDB goes (with its flows, ports and controller). */
  static async remove(ovsdb: string): Promise<string[]> {
    const db = new OvsdbClient(ovsdb);
    try {
      await db.connect();
    } catch {
      return []; // no Open vSwitch here: nothing of ours in it
    }
    try {
      const bridges = await db.select('Bridge', ['_uuid', 'name', 'external_ids']);
      const ours = bridges.filter((b) => mapObject(b.external_ids)[OWNED.key] === OWNED.value);
      if (ours.length === 0) return [];
      const [root] = await db.select('Open_vSwitch', ['_uuid']);
      await db.transact([
        {
          op: 'mutate',
          table: 'Open_vSwitch',
          where: [['_uuid', '==', root._uuid]],
          mutations: [['bridges', 'delete', set(ours.map((b) => b._uuid))]],
        },
      ]);
      return ours.map((b) => String(b.name));
    } finally {
      db.close();
    }
  }
}
