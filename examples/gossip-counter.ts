// How a component uses the mesh, in a page: a grow-only counter (a G-Counter
// CRDT) that every peer can increment and every peer converges on.
//
//   npm run build && node dist/examples/gossip-counter.js
import { pathToFileURL } from 'node:url';
import {
  type Gossip,
  type GossipData,
  type Gossiper,
  Mesh,
  defaultMeshTimings,
  connectInMemory,
  pack,
  unpack,
  randomPeerName,
  type PeerName,
} from '../mesh/index.js';
import { silentLogger } from '../lib/logger.js';

/** Per-peer counts; merge takes the maximum of each, so it is commutative and idempotent. */
class Counts implements GossipData {
  constructor(readonly counts: Map<PeerName, number>) {}
  encode(): Uint8Array {
    return pack(Object.fromEntries(this.counts));
  }
  merge(other: GossipData): GossipData {
    const m = new Map(this.counts);
    for (const [p, n] of (other as Counts).counts) m.set(p, Math.max(m.get(p) ?? 0, n));
    return new Counts(m);
  }
}

export class GCounter implements Gossiper {
  private readonly counts = new Map<PeerName, number>();
  private readonly channel: Gossip;

  constructor(private readonly mesh: Mesh) {
    this.channel = mesh.registerChannel('counter', this);
  }

  increment(): void {
    const n = (this.counts.get(this.mesh.name) ?? 0) + 1;
    this.counts.set(this.mesh.name, n);
    this.channel.gossipUpdate(new Counts(new Map([[this.mesh.name, n]])));
  }

  get value(): number {
    let sum = 0;
    for (const n of this.counts.values()) sum += n;
    return sum;
  }

  // Gossiper: the whole state, for new neighbours and anti-entropy ...
  gossip(): GossipData {
    return new Counts(new Map(this.counts));
  }

  // ... and merging an update, returning only what was new to us so it spreads on.
  onGossip(update: Uint8Array): GossipData | null {
    const raw = unpack(update);
    if (typeof raw !== 'object' || raw === null) throw new Error('counter update is not a map');
    const learnt = new Map<PeerName, number>();
    for (const [peer, n] of Object.entries(raw)) {
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new Error('counter value is not a count');
      if (n > (this.counts.get(peer) ?? 0)) {
        this.counts.set(peer, n);
        learnt.set(peer, n);
      }
    }
    return learnt.size > 0 ? new Counts(learnt) : null;
  }
}

export function makeMesh(nickname: string, port = 6783): Mesh {
  return new Mesh({
    name: randomPeerName(),
    nickname,
    uid: Math.floor(Math.random() * 2 ** 52)
      .toString(16)
      .padStart(16, '0'),
    port,
    connLimit: 0,
    ...defaultMeshTimings,
    gossipDelay: 5,
    routesDelay: 5,
    fullStateGossip: false,
    log: silentLogger,
  });
}

async function main(): Promise<void> {
  // Five peers in a line: a - b - c - d - e. Gossip crosses the hops.
  const meshes = ['a', 'b', 'c', 'd', 'e'].map((n) => makeMesh(n));
  const counters = meshes.map((m) => new GCounter(m));
  for (let i = 0; i + 1 < meshes.length; i++) connectInMemory(meshes[i], meshes[i + 1]);
  counters[0].increment();
  counters[4].increment();
  counters[4].increment();
  await new Promise((r) => setTimeout(r, 200));
  for (const [i, c] of counters.entries()) console.log(`${meshes[i].config.nickname}: counter = ${c.value}`);
  for (const m of meshes) m.stop();
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main();
