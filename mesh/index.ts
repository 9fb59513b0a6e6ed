// The mesh library's public surface: what weft's components (and an application of their own, see
// examples/gossip-counter.ts) use. The mesh knows nothing of what it carries: a component registers a
// named gossip channel (a Gossiper) and gets a Gossip to send with. It imports nothing of weft above
// it (lib/ and net/ only); what it keeps on disk is handed to it (PeerKeys, RegisterTable).
export { Mesh, MeshConnection, defaultMeshTimings, type MeshConfig, type MeshEvents, type MeshView } from './mesh.js';
export { BytesGossipData, type Gossip, type GossipData, type Gossiper } from './gossip.js';
export type { MeshLink, RemoteIdentity } from './link.js';
export { connectInMemory } from './memory-link.js';
export { pack, unpack } from './messages.js';
export {
  isPeerName,
  parsePeerName,
  peerNameFromBytes,
  peerNameToBytes,
  randomPeerName,
  type PeerName,
} from './peer-name.js';
export {
  MAX_VERSION,
  PeerRecords,
  comparePeerRecords,
  mergePeerRecords,
  type EntryCodec,
  type PeerRecord,
} from './peer-records.js';
export {
  RegisterTable,
  compareRegisters,
  mergeRegisters,
  registerFromWire,
  type Register,
  type RegisterCodec,
  type RegisterStore,
} from './register-table.js';
export { tombstoneTimings, type TombstoneOptions, type TombstoneTimings } from './tombstones.js';
export { PeerKeys, pinnedKeyFromJson, type PinnedKey } from './peer-keys.js';
export { PROTOCOL_MAX, PROTOCOL_MIN, passwordKey, rawPublicKey } from './protocol-crypto.js';
export { TcpTransport, type DialOptions, type HandshakeFailure, type LocalIdentity } from './tcp.js';
export { ConnectionMaker, type ConnectionMakerOptions } from './connection-maker.js';
export type { PeerEntry } from './topology.js';
