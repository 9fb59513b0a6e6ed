import type { RouterOptions } from '../../router/options.js';

/** Router options for in-process routers on loopback, with fast timers. */
export function routerOptions(over: Partial<RouterOptions> & Pick<RouterOptions, 'dataDir' | 'port'>): RouterOptions {
  return {
    host: '127.0.0.1',
    nickname: 'test',
    password: null,
    connLimit: 200,
    discovery: true,
    httpAddr: `127.0.0.1:${over.port + 1}`,
    logLevel: 'info',
    gossipInterval: 1000,
    heartbeatInterval: 500,
    ipallocRange: '10.32.0.0/12',
    ipallocRange6: 'fd77:6566:7400::/48',
    ipv6: false,
    ipv6Nat: false,
    ipallocInit: 'consensus',
    ipallocTimeout: 5000,
    // In-process routers run in the test's own namespace: never plumb a bridge there.
    datapath: 'none',
    ovsdb: 'unix:/var/run/openvswitch/db.sock',
    ovsBridge: 'weft-ovs',
    dns: false,
    dnsDomain: 'weft.local.',
    dnsTtl: 1,
    resolvConf: '/etc/resolv.conf',
    fastdp: true,
    sleeve: true,
    trustedSubnets: [],
    serviceRange: '10.96.0.0/16',
    serviceRange6: 'fd77:6566:7401::/112',
    metricsAddr: '',
    dockerApi: '',
    dockerPlugin: '',
    peers: [],
    ...over,
  };
}
