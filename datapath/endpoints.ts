// The endpoint table: which container MACs and addresses live at which peer,
// one record per peer on the `endpoints` gossip channel (see PeerRecords).
// Records of peers that left stay 60 s, so the kernel keeps forwarding to a
// host whose router is restarting.
import { type MeshView, PeerRecords, type EntryCodec, type PeerName } from '../mesh/index.js';
import { canonicalCidr, canonicalCidr6, canonicalMac, GROUP_NAME } from '../net/validate.js';

const ENDPOINTS_CHANNEL = 'endpoints';

export interface Endpoint {
  container: string;
  mac: string;
  /** "ip/prefix", IPv4: what the datapath, the policy and services use. */
  cidrs: string[];
  /**
   * IPv6 "ip/prefix" a peer advertises (in the same wire list as the IPv4 ones). Nothing here uses
   * them yet; they are kept, and passed on with the record (after the IPv4 ones: the content key
   * does not depend on the order), so a dual-stack peer's record is neither refused whole nor
   * stripped by a peer that relays it.
   */
  cidrs6?: string[];
  /** Security groups the container belongs to (policy/). */
  groups?: string[];
  /** Local only (not gossiped): a CNI container's namespace path and interface name. */
  netns?: string;
  ifname?: string;
  /** Local only: the inode of the container's network namespace at attach (a reused pid is another container). */
  nsInode?: number;
}

export const endpointCodec: EntryCodec<Endpoint> = {
  toWire: (e) => {
    const all = e.cidrs6 && e.cidrs6.length > 0 ? [...e.cidrs, ...e.cidrs6] : e.cidrs;
    return e.groups && e.groups.length > 0 ? [e.container, e.mac, all, e.groups] : [e.container, e.mac, all];
  },
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
    const v4: string[] = [];
    const v6: string[] = [];
    for (const c of cidrs) {
      if (typeof c === 'string' && c.includes(':')) {
        if (!isCanonicalCidr6(c)) throw new Error('endpoint address is not in canonical form');
        v6.push(c);
      } else if (canonicalCidr(c, true, 'endpoint address') === c) v4.push(c);
      else throw new Error('endpoint address is not in canonical form');
    }
    return {
      container,
      mac,
      cidrs: v4,
      ...(v6.length > 0 ? { cidrs6: v6 } : {}),
      ...(groups ? { groups: groups as string[] } : {}),
    };
  },
  key: (e) =>
    JSON.stringify([e.container, e.mac, [...e.cidrs, ...(e.cidrs6 ?? [])].sort(), [...(e.groups ?? [])].sort()]),
};

/** Whether text is an IPv6 "ip/prefix" in its one form (the address keeps its host bits). */
function isCanonicalCidr6(text: string): boolean {
  try {
    return canonicalCidr6(text, true) === text;
  } catch {
    return false;
  }
}

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
