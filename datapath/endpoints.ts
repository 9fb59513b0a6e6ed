// The endpoint table: which container MACs and addresses live at which peer,
// one record per peer on the `endpoints` gossip channel (see PeerRecords).
// Records of peers that left stay 60 s, so the kernel keeps forwarding to a
// host whose router is restarting.
import { type MeshView, PeerRecords, type EntryCodec, type PeerName } from '../mesh/index.js';
import { canonicalCidr, canonicalMac, GROUP_NAME } from '../net/validate.js';

const ENDPOINTS_CHANNEL = 'endpoints';

export interface Endpoint {
  container: string;
  mac: string;
  /** "ip/prefix" */
  cidrs: string[];
  /** Security groups the container belongs to (policy/). */
  groups?: string[];
  /** Local only (not gossiped): a CNI container's namespace path and interface name. */
  netns?: string;
  ifname?: string;
  /** Local only: the inode of the container's network namespace at attach (a reused pid is another container). */
  nsInode?: number;
}

export const endpointCodec: EntryCodec<Endpoint> = {
  toWire: (e) =>
    e.groups && e.groups.length > 0 ? [e.container, e.mac, e.cidrs, e.groups] : [e.container, e.mac, e.cidrs],
  fromWire(w) {
    if (!Array.isArray(w) || (w.length !== 3 && w.length !== 4)) throw new Error('endpoint is malformed');
    const [container, mac, cidrs, groups] = w as unknown[];
    if (
      groups !== undefined &&
      (!Array.isArray(groups) ||
        groups.length > 64 ||
        !groups.every((g) => typeof g === 'string' && GROUP_NAME.test(g)))
    )
      throw new Error('endpoint groups are malformed');
    if (
      typeof container !== 'string' ||
      container.length === 0 ||
      container.length > 256 ||
      !Array.isArray(cidrs) ||
      cidrs.length > 64
    ) {
      throw new Error('endpoint is malformed');
    }
    // Canonical forms only: these become fdb and neighbour entries on every host.
    if (canonicalMac(mac, 'endpoint MAC') !== mac) throw new Error('endpoint MAC is not in canonical form');
    if (!cidrs.every((c) => canonicalCidr(c, true, 'endpoint address') === c))
      throw new Error('endpoint address is not in canonical form');
    return { container, mac, cidrs: cidrs as string[], ...(groups ? { groups: groups as string[] } : {}) };
  },
  key: (e) => JSON.stringify([e.container, e.mac, [...e.cidrs].sort(), [...(e.groups ?? [])].sort()]),
};

export class EndpointTable extends PeerRecords<Endpoint> {
  private ownersByMac: Map<string, PeerName> | null = null;
  constructor(mesh: MeshView, graceMs = 60_000) {
    super(mesh, ENDPOINTS_CHANNEL, endpointCodec, graceMs);
    this.onChange(() => (this.ownersByMac = null));
  }

  /** Every container MAC and its peer (a new map after each change, the same one until then: the sleeve looks up per frame). */
  owners(): ReadonlyMap<string, PeerName> {
    return (this.ownersByMac ??= new Map(this.all().map((e) => [e.mac, e.peer])));
  }
}
