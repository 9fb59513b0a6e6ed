// Messages on an established mesh connection, encoded with msgpackr as tuples.
// Everything that arrives from the network is validated here; a malformed
// message becomes an Error, never a crash.
import { Packr } from 'msgpackr';
import { isPeerName, type PeerName } from './peer-name.js';

// useRecords: false, because shared record structures break a fresh decoder after a reconnect.
const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true });

export const Tag = {
  Heartbeat: 0,
  Ready: 1,
  Gossip: 2,
  Unicast: 3,
  Broadcast: 4,
  Digest: 5,
  Close: 6,
  /** Not on the wire: what a tag this version does not know decodes to. */
  Unknown: 255,
} as const;

export type MeshMessage =
  | { tag: typeof Tag.Heartbeat }
  | { tag: typeof Tag.Ready }
  | { tag: typeof Tag.Gossip; channel: string; src: PeerName; payload: Uint8Array }
  | { tag: typeof Tag.Unicast; channel: string; src: PeerName; dst: PeerName; payload: Uint8Array }
  | { tag: typeof Tag.Broadcast; channel: string; src: PeerName; payload: Uint8Array }
  | { tag: typeof Tag.Digest; channel: string; reply: boolean; digest: Uint8Array }
  | { tag: typeof Tag.Close; reason: string }
  | { tag: typeof Tag.Unknown };

const MAX_CHANNEL_NAME = 64;
const MAX_REASON = 1024;

export function encodeMessage(m: MeshMessage): Buffer {
  switch (m.tag) {
    case Tag.Heartbeat:
    case Tag.Ready:
    case Tag.Unknown:
      return packr.pack([m.tag]);
    case Tag.Gossip:
    case Tag.Broadcast:
      return packr.pack([m.tag, m.channel, m.src, m.payload]);
    case Tag.Unicast:
      return packr.pack([m.tag, m.channel, m.src, m.dst, m.payload]);
    case Tag.Digest:
      return packr.pack([m.tag, m.channel, m.reply, m.digest]);
    case Tag.Close:
      return packr.pack([m.tag, m.reason.slice(0, MAX_REASON)]);
  }
}

function channelName(v: unknown): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_CHANNEL_NAME) throw new Error('invalid channel name');
  return v;
}

function peer(v: unknown, what: string): PeerName {
  if (!isPeerName(v)) throw new Error(`invalid ${what} peer name`);
  return v;
}

function bytes(v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new Error('payload is not binary');
  return v;
}

/** Decodes one message; throws a descriptive Error for anything malformed. */
export function decodeMessage(buf: Uint8Array): MeshMessage {
  let v: unknown;
  try {
    v = packr.unpack(buf);
  } catch (err) {
    throw new Error(`undecodable message: ${(err as Error).message}`);
  }
  if (!Array.isArray(v) || v.length === 0) throw new Error('message is not a tagged tuple');
  const [tag, ...f] = v as unknown[];
  switch (tag) {
    case Tag.Heartbeat:
    case Tag.Ready:
      return { tag };
    case Tag.Gossip:
    case Tag.Broadcast:
      if (f.length !== 3) break;
      return { tag, channel: channelName(f[0]), src: peer(f[1], 'source'), payload: bytes(f[2]) };
    case Tag.Unicast:
      if (f.length !== 4) break;
      return {
        tag,
        channel: channelName(f[0]),
        src: peer(f[1], 'source'),
        dst: peer(f[2], 'destination'),
        payload: bytes(f[3]),
      };
    case Tag.Digest:
      if (f.length !== 3 || typeof f[1] !== 'boolean') break;
      return { tag, channel: channelName(f[0]), reply: f[1], digest: bytes(f[2]) };
    case Tag.Close:
      if (f.length !== 1 || typeof f[0] !== 'string') break;
      return { tag, reason: f[0].slice(0, MAX_REASON) };
    default:
      // Unknown tags come from newer peers: the caller ignores them.
      return { tag: Tag.Unknown };
  }
  throw new Error(`malformed message with tag ${String(tag)}`);
}

/** msgpack with the mesh's settings, for channel payloads. */
export function pack(v: unknown): Buffer {
  return packr.pack(v);
}

export function unpack(buf: Uint8Array): unknown {
  return packr.unpack(buf);
}
