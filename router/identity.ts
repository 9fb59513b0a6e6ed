// The peer's identity, kept in the data directory so a restarted router is the
// same peer: its name and its static Ed25519 key. Written with
// write-then-rename, readable only by root.
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { writeJsonAtomically } from '../lib/json-file.js';
import { join } from 'node:path';
import { rawPublicKey, isPeerName, randomPeerName, type PeerName } from '../mesh/index.js';

export interface Identity {
  name: PeerName;
  /** PKCS#8 PEM of the Ed25519 private key. */
  privateKeyPem: string;
  publicKey: Buffer;
}

interface StoredIdentity {
  name: string;
  privateKey: string;
}

function identityPath(dataDir: string): string {
  return join(dataDir, 'identity.json');
}

/** Loads the identity, creating it on first start. `nameOverride` (--name) replaces the stored name. */
export function loadIdentity(dataDir: string, nameOverride?: PeerName): Identity {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = identityPath(dataDir);
  let stored: StoredIdentity | null = null;
  let text: string | null = null;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (text !== null) {
    try {
      const v = JSON.parse(text) as StoredIdentity;
      if (!isPeerName(v.name) || typeof v.privateKey !== 'string') throw new Error('missing fields');
      stored = v;
    } catch (err) {
      // Never silently replace an identity: other peers know this one.
      throw new Error(
        `the identity file ${path} is corrupt (${(err as Error).message}); move it away to start as a new peer`,
      );
    }
  }
  if (!stored || (nameOverride && nameOverride !== stored.name)) {
    const privateKey =
      stored?.privateKey ??
      generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    stored = { name: nameOverride ?? randomPeerName(), privateKey };
    writeJsonAtomically(path, stored, 0o600);
  }
  // createPublicKey accepts a private key and derives its public half.
  const publicKey = rawPublicKey(createPublicKey(stored.privateKey));
  return { name: stored.name, privateKeyPem: stored.privateKey, publicKey };
}

/** A fresh incarnation id: 16 hex digits, never zero. */
export function newUid(): string {
  let uid: string;
  do uid = randomBytes(8).toString('hex');
  while (/^0+$/.test(uid));
  return uid;
}
