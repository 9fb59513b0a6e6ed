// Which static key each peer name belongs to: remembered the first time a peer
// authenticates, and held to after that, so a mesh member cannot take another's
// name (its topology entry, its endpoints, its names) by presenting the name
// with a key of its own. Forgotten only on purpose (weft rmpeer), for a peer
// re-installed with a fresh key. The caller keeps the list on disk.
import { type PeerName, isPeerName } from './peer-name.js';

export interface PinnedKey {
  name: PeerName;
  /** The Ed25519 public key, hex. */
  key: string;
  /** When it was first seen (ms). */
  since: number;
}

export class PeerKeys {
  private readonly pins = new Map<PeerName, PinnedKey>();

  constructor(
    initial: PinnedKey[] = [],
    /** Told the whole list after every change (to persist it). */
    private readonly changed: (all: PinnedKey[]) => void = () => undefined,
  ) {
    for (const p of initial) this.pins.set(p.name, p);
  }

  /** Checks a peer's key against what was pinned for its name; pins it if new. Null when fine, else why not. */
  check(name: PeerName, key: Buffer): string | null {
    const hex = key.toString('hex');
    const pin = this.pins.get(name);
    if (!pin) {
      this.pins.set(name, { name, key: hex, since: Date.now() });
      this.changed(this.all());
      return null;
    }
    if (pin.key === hex) return null;
    return `peer ${name} presented another key than the one it has had since ${new Date(pin.since).toISOString()} (someone else using its name, or the peer was re-installed; if re-installed, run weft rmpeer ${name} here to forget the old key)`;
  }

  /** Forgets a peer's key (rmpeer); true when one was pinned. */
  forget(name: PeerName): boolean {
    const had = this.pins.delete(name);
    if (had) this.changed(this.all());
    return had;
  }

  has(name: PeerName): boolean {
    return this.pins.has(name);
  }

  all(): PinnedKey[] {
    return [...this.pins.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }
}

/** One pinned key from the data dir, checked. */
export function pinnedKeyFromJson(x: unknown): PinnedKey {
  const p = x as PinnedKey;
  if (
    !p ||
    typeof p !== 'object' ||
    !isPeerName(p.name) ||
    typeof p.key !== 'string' ||
    !/^[0-9a-f]{64}$/.test(p.key) ||
    !Number.isSafeInteger(p.since)
  )
    throw new Error('not a pinned peer key');
  return { name: p.name, key: p.key, since: p.since };
}
