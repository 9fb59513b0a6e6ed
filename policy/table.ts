// The policy table: every security group rule in the mesh, a table of
// last-writer-wins registers (mesh/register-table.ts) on its own gossip
// channel, one per rule id. Any peer may add or remove any rule; every peer
// converges on the same rules. Persisted in the data directory.
import { randomBytes } from 'node:crypto';
import {
  type MeshView,
  RegisterTable,
  compareRegisters,
  mergeRegisters,
  registerFromWire,
  type Register,
  type RegisterCodec,
  type TombstoneOptions,
} from '../mesh/index.js';
import { listFile, type Persist } from '../lib/json-file.js';
import { RuleError, checkRule, type Rule } from './rules.js';

const POLICY_CHANNEL = 'policy';

export type PolicyEntry = Register<Rule>;

const ruleCodec: RegisterCodec<Rule> = {
  what: 'policy entry',
  check(value, id) {
    const r = checkRule(value);
    if (r.id !== id) throw new RuleError('policy entry id does not match its rule');
    return r;
  },
  fail: (message) => new RuleError(message),
  maxEntries: 100_000,
};

export const compareEntries = compareRegisters<Rule>;
export const mergeEntries = mergeRegisters<Rule>;
export const entryFromWire = (w: unknown): PolicyEntry => registerFromWire(ruleCodec, w);

export class PolicyTable extends RegisterTable<Rule> {
  /** `members`: where the tombstone collector keeps the mesh's members (mesh/tombstones.ts). */
  constructor(mesh: MeshView, persist?: Persist, members?: Persist, tombstones: TombstoneOptions = {}) {
    super(mesh, POLICY_CHANNEL, ruleCodec, persist && listFile(persist), {
      ...tombstones,
      ...(members ? { store: listFile(members) } : {}),
    });
  }

  /** The rules in force, in id order. */
  rules(): Rule[] {
    return this.values();
  }

  static newId(): string {
    return randomBytes(16).toString('hex'); // 128 bits: ids made anywhere never collide
  }

  add(rule: Rule): PolicyEntry {
    return this.put(rule.id, rule);
  }
}
