import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeMessage, encodeMessage, Tag, type MeshMessage } from '../../../mesh/messages.js';
import { decodeTopologyUpdate } from '../../../mesh/topology-gossip.js';
import { Opener, Sealer } from '../../../mesh/protocol-crypto.js';
import { randomBytes } from 'node:crypto';

const name = fc.constantFrom('02:00:00:00:00:01', 'aa:bb:cc:dd:ee:ff');
const channel = fc.string({ minLength: 1, maxLength: 20 });
const payload = fc.uint8Array({ maxLength: 200 });
const arbMessage: fc.Arbitrary<MeshMessage> = fc.oneof(
  fc.constant({ tag: Tag.Heartbeat } as MeshMessage),
  fc.constant({ tag: Tag.Ready } as MeshMessage),
  fc.record({ tag: fc.constant(Tag.Gossip), channel, src: name, payload }),
  fc.record({ tag: fc.constant(Tag.Broadcast), channel, src: name, payload }),
  fc.record({ tag: fc.constant(Tag.Unicast), channel, src: name, dst: name, payload }),
  fc.record({ tag: fc.constant(Tag.Digest), channel, reply: fc.boolean(), digest: payload }),
  fc.record({ tag: fc.constant(Tag.Close), reason: fc.string({ maxLength: 100 }) }),
);

function normalise(m: MeshMessage): unknown {
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [k, v instanceof Uint8Array ? Array.from(v) : v]));
}

describe('mesh message codec', () => {
  it('round-trips every message', () => {
    fc.assert(
      fc.property(arbMessage, (m) => {
        expect(normalise(decodeMessage(encodeMessage(m)))).toEqual(normalise(m));
      }),
    );
  });

  it('arbitrary bytes give a message or an Error, nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        try {
          decodeMessage(bytes);
        } catch (err) {
          expect(err).toBeInstanceOf(Error);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('mutated valid messages give a message or an Error', () => {
    fc.assert(
      fc.property(arbMessage, fc.nat(), fc.integer({ min: 0, max: 255 }), (m, at, byte) => {
        const b = Buffer.from(encodeMessage(m));
        b[at % b.length] = byte;
        try {
          decodeMessage(b);
        } catch (err) {
          expect(err).toBeInstanceOf(Error);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('topology updates from arbitrary bytes give entries or an Error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        try {
          decodeTopologyUpdate(bytes);
        } catch (err) {
          expect(err).toBeInstanceOf(Error);
        }
      }),
    );
  });
});

describe('frame sealing', () => {
  it('opens what was sealed, in order', () => {
    const key = randomBytes(32);
    const s = new Sealer(key);
    const o = new Opener(key);
    for (const text of ['one', 'two', 'three']) expect(o.open(s.seal(Buffer.from(text))).toString()).toBe(text);
  });
  it('refuses replayed, reordered, forged frames and frames under another key', () => {
    const key = randomBytes(32);
    const s = new Sealer(key);
    const first = s.seal(Buffer.from('one'));
    const second = s.seal(Buffer.from('two'));
    expect(() => new Opener(key).open(second)).toThrow();
    const o = new Opener(key);
    o.open(first);
    expect(() => o.open(first)).toThrow();
    const forged = Buffer.from(second);
    forged[0] ^= 1;
    expect(() => o.open(forged)).toThrow();
    expect(() => new Opener(randomBytes(32)).open(first)).toThrow();
  });
});
