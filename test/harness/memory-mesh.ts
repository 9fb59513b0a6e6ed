import { Mesh, defaultMeshTimings, type MeshConfig, randomPeerName } from '../../mesh/index.js';
import { silentLogger } from '../../lib/logger.js';
import { newUid } from '../../router/identity.js';

/** A mesh with fast timers, for in-process tests. */
export function testMesh(nickname: string, over: Partial<MeshConfig> = {}): Mesh {
  return new Mesh({
    name: randomPeerName(),
    nickname,
    uid: newUid(),
    port: 6783,
    connLimit: 0,
    ...defaultMeshTimings,
    gossipDelay: 5,
    gossipInterval: 200,
    heartbeatInterval: 1000,
    gcDelay: 100,
    routesDelay: 5,
    fullStateGossip: false,
    log: silentLogger,
    ...over,
  });
}
