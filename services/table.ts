// The service table (a register per service name on the `services` channel, any
// peer may create or remove; persisted) and the backend health records (each
// peer announces which of its own backends fail their check, on
// `service-health`; records of peers that leave go with them).
import {
  type MeshView,
  PeerRecords,
  type EntryCodec,
  RegisterTable,
  type RegisterCodec,
  type TombstoneOptions,
} from '../mesh/index.js';
import type { Cidr } from '../net/addr.js';
import { listFile, type Persist } from '../lib/json-file.js';
import { SERVICE_NAME, ServiceError, checkService, type Service } from './service.js';

const SERVICES_CHANNEL = 'services';
const HEALTH_CHANNEL = 'service-health';
/** Failures of the checks over IPv6: a channel of its own, which routers before IPv6 relay and ignore. */
const HEALTH6_CHANNEL = 'service-health6';

/** Services from the wire and the data dir: their VIPs must be in this router's service range (the same on every peer). */
const serviceCodec = (range: Cidr): RegisterCodec<Service> => ({
  what: 'service',
  check: (value, id) => checkService(value, id, range),
  fail: (message) => new ServiceError(message),
  maxEntries: 65_536,
});

export class ServiceTable extends RegisterTable<Service> {
  /** `members`: where the tombstone collector keeps the mesh's members (mesh/tombstones.ts). */
  constructor(mesh: MeshView, range: Cidr, persist?: Persist, members?: Persist, tombstones: TombstoneOptions = {}) {
    super(mesh, SERVICES_CHANNEL, serviceCodec(range), persist && listFile(persist), {
      ...tombstones,
      ...(members ? { store: listFile(members) } : {}),
    });
  }
}

/** A backend that fails its service's check, as its own host sees it. */
export interface Failing {
  service: string;
  container: string;
}

const failingCodec: EntryCodec<Failing> = {
  toWire: (e) => [e.service, e.container],
  fromWire(w) {
    if (!Array.isArray(w) || w.length !== 2) throw new ServiceError('health entry is malformed');
    const [service, container] = w as unknown[];
    if (
      typeof service !== 'string' ||
      !SERVICE_NAME.test(service) ||
      typeof container !== 'string' ||
      container.length === 0 ||
      container.length > 256
    )
      throw new ServiceError('health entry is malformed');
    return { service, container };
  },
  key: (e) => `${e.service} ${e.container}`,
};

export class HealthRecords extends PeerRecords<Failing> {
  constructor(mesh: MeshView, ipv6 = false) {
    super(mesh, ipv6 ? HEALTH6_CHANNEL : HEALTH_CHANNEL, failingCodec, 1000);
  }
}
