// Single-decree Paxos over gossip, to agree once on which peers the ring is
// first divided among. Every elector plays every role; the whole state is a
// map node -> claims that each node changes only for itself and that merges
// by taking the higher promise and the higher accepted proposal per node.
import { isPeerName, type PeerName } from '../mesh/index.js';

/** A node is a peer incarnation: a restarted peer cannot reuse its old promises. */
export type NodeId = string; // `${name}/${uid}`

interface ProposalId {
  round: number;
  proposer: NodeId;
}

interface Claims {
  promise: ProposalId | null;
  accepted: ProposalId | null;
  value: PeerName[] | null;
  /** The proposal that first chose `value`: nodes agree when a quorum accepted values of one origin. */
  origin: ProposalId | null;
}

export type PaxosState = Record<NodeId, Claims>;

export function nodeId(name: PeerName, uid: string): NodeId {
  return `${name}/${uid}`;
}

function peerOf(id: NodeId): PeerName {
  return id.split('/')[0];
}

function precedes(a: ProposalId | null, b: ProposalId | null): boolean {
  if (!b) return false;
  if (!a) return true;
  return a.round < b.round || (a.round === b.round && a.proposer < b.proposer);
}

function same(a: ProposalId | null, b: ProposalId | null): boolean {
  return a === b || (!!a && !!b && a.round === b.round && a.proposer === b.proposer);
}

export class PaxosNode {
  readonly knows: PaxosState = {};

  constructor(
    readonly id: NodeId,
    public quorum: number,
  ) {
    this.knows[id] = { promise: null, accepted: null, value: null, origin: null };
  }

  /** Merges another node's view; true if ours changed. */
  update(from: PaxosState): boolean {
    let changed = false;
    for (const [id, theirs] of Object.entries(from)) {
      const ours = this.knows[id];
      if (!ours) {
        this.knows[id] = { ...theirs };
        changed = true;
        continue;
      }
      if (precedes(ours.promise, theirs.promise)) {
        ours.promise = theirs.promise;
        changed = true;
      }
      if (precedes(ours.accepted, theirs.accepted)) {
        ours.accepted = theirs.accepted;
        ours.value = theirs.value;
        ours.origin = theirs.origin;
        changed = true;
      }
    }
    return changed;
  }

  /** Starts a new round above every round seen. */
  propose(): void {
    let round = 0;
    for (const c of Object.values(this.knows)) round = Math.max(round, c.promise?.round ?? 0, c.accepted?.round ?? 0);
    this.knows[this.id].promise = { round: round + 1, proposer: this.id };
  }

  /** Promise, accept, and follow accepted proposals; true if our claims changed. */
  think(): boolean {
    const ours = this.knows[this.id];
    const before = JSON.stringify(ours);
    for (const c of Object.values(this.knows)) if (precedes(ours.promise, c.promise)) ours.promise = c.promise;
    if (ours.promise && ours.promise.proposer === this.id) {
      let promises = 0;
      let best: Claims | null = null;
      for (const c of Object.values(this.knows)) {
        if (!same(c.promise, ours.promise)) continue;
        promises++;
        if (c.accepted && (!best || precedes(best.accepted, c.accepted))) best = c;
      }
      if (promises >= this.quorum) {
        ours.accepted = ours.promise;
        if (best?.value) {
          ours.value = best.value;
          ours.origin = best.origin;
        } else {
          // The value: every peer heard from in the election.
          ours.value = [...new Set(Object.keys(this.knows).map(peerOf))].sort();
          ours.origin = ours.promise;
        }
      }
    }
    for (const c of Object.values(this.knows)) {
      if (c !== ours && c.accepted && same(c.accepted, ours.promise)) {
        ours.accepted = c.accepted;
        ours.value = c.value;
        ours.origin = c.origin;
        break;
      }
    }
    return JSON.stringify(ours) !== before;
  }

  /** The agreed value, once a quorum accepted values of one origin. */
  consensus(): PeerName[] | null {
    const counts = new Map<string, number>();
    for (const c of Object.values(this.knows)) {
      if (!c.accepted || !c.origin || !c.value) continue;
      const k = `${c.origin.round}/${c.origin.proposer}`;
      const n = (counts.get(k) ?? 0) + 1;
      counts.set(k, n);
      if (n >= this.quorum) return c.value;
    }
    return null;
  }

  /** Electors heard from (peer names). */
  electors(): PeerName[] {
    return [...new Set(Object.keys(this.knows).map(peerOf))].sort();
  }
}

function isProposal(v: unknown): v is ProposalId | null {
  if (v === null) return true;
  const p = v as ProposalId;
  return (
    typeof p === 'object' &&
    Number.isSafeInteger(p.round) &&
    p.round >= 0 &&
    typeof p.proposer === 'string' &&
    p.proposer.length < 64
  );
}

/** Validates Paxos state from the network. */
export function validatePaxos(v: unknown): PaxosState {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('paxos state is not a map');
  const out: PaxosState = {};
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > 10_000) throw new Error('paxos state too large');
  for (const [id, c] of entries) {
    const claims = c as Claims;
    if (!/^[0-9a-f]{16}$/.test(id.slice(18)) || id[17] !== '/' || !isPeerName(id.slice(0, 17)))
      throw new Error('paxos node id is malformed');
    if (
      typeof claims !== 'object' ||
      claims === null ||
      !isProposal(claims.promise) ||
      !isProposal(claims.accepted) ||
      !isProposal(claims.origin)
    ) {
      throw new Error('paxos claims are malformed');
    }
    if (claims.value !== null && !(Array.isArray(claims.value) && claims.value.every((p) => isPeerName(p)))) {
      throw new Error('paxos value is malformed');
    }
    out[id] = { promise: claims.promise, accepted: claims.accepted, value: claims.value, origin: claims.origin };
  }
  return out;
}
