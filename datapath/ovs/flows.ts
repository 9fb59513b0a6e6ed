// The flows weft wants in its OVS bridge, from what the control plane knows:
// the same orders the VXLAN datapath turns into fdb entries ("MAC M lives at
// peer P, reachable at address A") become OpenFlow flows. Two ports: the veth
// to weft's Linux bridge (where containers, the sleeve and the DNS address
// are) and the VXLAN port (remote_ip=flow, key=flow). Each flow's cookie says
// what it is for (kind in the top byte, a hash of the container or peer below),
// so `ovs-ofctl dump-flows BRIDGE cookie=C/-1` shows one container's flows.
// Table 0 takes VXLAN only from the underlay addresses of our peers (an admit
// flow per peer; the rest of the tunnel is dropped) and sends it on to table 1,
// where it is delivered; traffic from the bridge is handled in table 0.
import { createHash } from 'node:crypto';
import { normalizeValue, type FieldName, type FlowSpec } from './openflow.js';

/** OpenFlow port numbers weft asks OVS for (ofport_request). */
export const PORT_BRIDGE = 1;
export const PORT_TUNNEL = 2;

export const CookieKind = {
  /** Traffic from the tunnel that is not for one container: broadcast and multicast to the bridge. */
  Base: 0x01,
  /** From the tunnel to a local container (or the bridge itself), by MAC. */
  Local: 0x02,
  /** From the bridge to a remote container's host, by MAC. */
  Remote: 0x03,
  /** From the bridge, broadcast and unknown unicast, to every peer on this datapath. */
  Flood: 0x04,
  /** A peer's VXLAN heartbeats: counted and dropped (datapath/vxlan/health.ts). */
  Heartbeat: 0x05,
  /** VXLAN from one peer's underlay address, admitted to table 1. */
  Admit: 0x06,
} as const;

/** Where VXLAN from admitted peers is delivered. */
const TABLE_DELIVER = 1;

export const KIND_MASK = 0xffn << 56n;

export function cookieFor(kind: number, id: string): bigint {
  const h = createHash('sha256').update(id).digest();
  return (BigInt(kind) << 56n) | (h.readBigUInt64BE(0) & ((1n << 56n) - 1n));
}

export const kindOf = (cookie: bigint) => Number(cookie >> 56n);

export interface FlowInputs {
  vni: number;
  /** This host's containers (and its bridge MAC, id "bridge"). */
  local: { id: string; mac: string }[];
  /** Remote containers on peers this datapath reaches, at their peer's underlay address. */
  remote: { id: string; mac: string; dst: string }[];
  /** Underlay addresses of the peers on this datapath (broadcast goes to each). */
  floods: string[];
  /** Peers whose heartbeats are counted: their bridge MAC. */
  heartbeats: { peer: string; mac: string }[];
  /** Underlay addresses whose VXLAN is taken (connected, unencrypted peers; datapath/firewall.ts says who). */
  tunnelSources: string[];
}

const mac = (m: string) => normalizeValue('eth_dst', m);

/** The tunnel's outer address field of the underlay address's family (one VXLAN port carries both). */
function tunnelField(addr: string, end: 'src' | 'dst'): FieldName {
  if (addr.includes(':')) return end === 'src' ? 'tun_ipv6_src' : 'tun_ipv6_dst';
  return end === 'src' ? 'tun_src' : 'tun_dst';
}

export function desiredFlows(x: FlowInputs): FlowSpec[] {
  const vni = normalizeValue('tunnel_id', String(x.vni));
  const fromTunnel = [
    { field: 'in_port' as const, value: String(PORT_TUNNEL) },
    { field: 'tunnel_id' as const, value: vni },
  ];
  const out: FlowSpec[] = [];
  for (const src of [...new Set(x.tunnelSources)].sort()) {
    out.push({
      cookie: cookieFor(CookieKind.Admit, src),
      tableId: 0,
      priority: 500,
      match: [
        { field: 'in_port', value: String(PORT_TUNNEL) },
        { field: tunnelField(src, 'src'), value: src },
      ],
      actions: [{ type: 'goto_table', table: TABLE_DELIVER }],
    });
  }
  out.push({
    cookie: cookieFor(CookieKind.Base, 'tunnel from no peer'),
    tableId: 0,
    priority: 450,
    match: [{ field: 'in_port', value: String(PORT_TUNNEL) }],
    actions: [],
  });
  for (const h of x.heartbeats) {
    out.push({
      cookie: cookieFor(CookieKind.Heartbeat, h.peer),
      tableId: TABLE_DELIVER,
      priority: 300,
      match: [
        ...fromTunnel,
        { field: 'eth_src', value: mac(h.mac) },
        { field: 'eth_type', value: normalizeValue('eth_type', '0x88b5') },
      ],
      actions: [],
    });
  }
  for (const l of x.local) {
    out.push({
      cookie: cookieFor(CookieKind.Local, l.id),
      tableId: TABLE_DELIVER,
      priority: 200,
      match: [...fromTunnel, { field: 'eth_dst', value: mac(l.mac) }],
      actions: [{ type: 'output', port: PORT_BRIDGE }],
    });
  }
  out.push({
    cookie: cookieFor(CookieKind.Base, 'broadcast'),
    tableId: TABLE_DELIVER,
    priority: 100,
    match: [...fromTunnel, { field: 'eth_dst', value: '01:00:00:00:00:00', mask: '01:00:00:00:00:00' }],
    actions: [{ type: 'output', port: PORT_BRIDGE }],
  });
  // OVS keeps a tunnel destination of each family once set: within one action list that sends to
  // peers of both families, each copy clears the other family's field first (with both set, the
  // kernel refuses the whole list and the userspace datapath sends by the IPv4 one).
  const toPeer = (dst: string, mixed = false) => [
    ...(mixed
      ? [
          dst.includes(':')
            ? { type: 'set_field' as const, field: 'tun_dst' as const, value: '0.0.0.0' }
            : { type: 'set_field' as const, field: 'tun_ipv6_dst' as const, value: '::' },
        ]
      : []),
    { type: 'set_field' as const, field: tunnelField(dst, 'dst'), value: dst },
    { type: 'set_field' as const, field: 'tunnel_id' as const, value: vni },
    { type: 'output' as const, port: PORT_TUNNEL },
  ];
  for (const r of x.remote) {
    out.push({
      cookie: cookieFor(CookieKind.Remote, r.id),
      tableId: 0,
      priority: 200,
      match: [
        { field: 'in_port', value: String(PORT_BRIDGE) },
        { field: 'eth_dst', value: mac(r.mac) },
      ],
      actions: toPeer(r.dst),
    });
  }
  const floods = [...new Set(x.floods)].sort();
  const mixed = floods.some((d) => d.includes(':')) && floods.some((d) => !d.includes(':'));
  if (floods.length > 0) {
    out.push({
      cookie: cookieFor(CookieKind.Flood, 'flood'),
      tableId: 0,
      priority: 50,
      match: [{ field: 'in_port', value: String(PORT_BRIDGE) }],
      actions: floods.flatMap((dst) => toPeer(dst, mixed)),
    });
  }
  return out;
}

/**
 * The peer addresses a flood flow sends to (a restarted router reads them back): each tunnel
 * destination set, not the clearing of the other family's field just before one.
 */
export function floodDestinations(flows: FlowSpec[]): string[] {
  return flows
    .filter((f) => kindOf(f.cookie) === CookieKind.Flood)
    .flatMap((f) =>
      f.actions.flatMap((a, i) => {
        const dst = tunnelDst(a);
        return dst !== null && tunnelDst(f.actions[i + 1]) === null ? [dst] : [];
      }),
    );
}

/** The address an action sets as the tunnel destination, or null. */
function tunnelDst(a: FlowSpec['actions'][number] | undefined): string | null {
  return a?.type === 'set_field' && (a.field === 'tun_dst' || a.field === 'tun_ipv6_dst') ? a.value : null;
}
