// Small JSON state files in the data dir. A write goes to a temporary file that
// is fsynced, renamed over the old one, and the directory fsynced, so a crash
// (even kill -9, even a power cut) leaves the old file or the new one, never
// half of one. A file that is there but cannot be read is an error that says
// what to do, never an empty state: an empty policy would enforce nothing.
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** A state file that exists but cannot be used; the message says which, why, and what to do. */
class StateFileError extends Error {}

/** Writes `value` as JSON beside `path`, fsyncs it, renames it over `path` and fsyncs the directory. Throws on failure (the temporary file is gone then). */
export function writeJsonAtomically(path: string, value: unknown, mode = 0o600): void {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  const data = Buffer.from(JSON.stringify(value, null, 2) + '\n');
  let fd = -1;
  try {
    fd = openSync(tmp, 'wx', mode);
    for (let o = 0; o < data.length;) o += writeSync(fd, data, o);
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(tmp, path);
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  // The rename is durable only once the directory is.
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/**
 * A JSON list from `path`: empty when the file does not exist; a StateFileError (saying what to do)
 * when it exists and is not a readable JSON list.
 */
export function readJsonList<T>(path: string): T[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw corrupt(path, (err as Error).message);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw corrupt(path, (err as Error).message);
  }
  if (!Array.isArray(v)) throw corrupt(path, 'not a JSON list');
  return v as T[];
}

/** Each item of a list read from `path`, checked by `check`; any bad item makes the whole file an error. */
export function readCheckedList<T>(path: string, check: (item: unknown) => T): T[] {
  return readJsonList<unknown>(path).map((item, i) => {
    try {
      return check(item);
    } catch (err) {
      throw corrupt(path, `entry ${i + 1}: ${(err as Error).message}`);
    }
  });
}

function corrupt(path: string, why: string): StateFileError {
  return new StateFileError(
    `the state file ${path} is damaged (${why}); the router will not start without knowing its state. ` +
      `Restore it from a backup, or move it away to start without it (what other peers hold comes back over the mesh; ${basename(path)} of this host alone is then lost)`,
  );
}

/** Where a table keeps its state, and who records failed writes. */
export interface Persist {
  path: string;
  writes: StateWrites;
}

/** A list kept in a state file: loaded checked (a bad item makes the file an error), saved through StateWrites. */
export function listFile(p: Persist): { load<T>(check: (item: unknown) => T): T[]; save(list: unknown[]): boolean } {
  return { load: (check) => readCheckedList(p.path, check), save: (list) => p.writes.write(p.path, list) };
}

/** The data directory and who records failed writes: what components get to keep state. */
export interface StateDir {
  dir: string;
  writes: StateWrites;
}

/** One file of the data directory. */
export function stateFile(state: StateDir, name: string): Persist {
  return { path: join(state.dir, name), writes: state.writes };
}

/** Writes that failed (a full disk, a read-only data dir), by file, until a later write of the same file succeeds. */
export class StateWrites {
  private readonly failing = new Map<string, { error: string; since: number; count: number }>();
  constructor(private readonly log?: { error(obj: object, msg?: string): void }) {}

  /** Writes the file; a failure is recorded and logged, never thrown: what changed in memory is still enforced. */
  write(path: string, value: unknown, mode?: number): boolean {
    try {
      writeJsonAtomically(path, value, mode);
      this.failing.delete(path);
      return true;
    } catch (err) {
      const cur = this.failing.get(path);
      const error = (err as Error).message;
      if (!cur)
        this.log?.error({ path, err: error }, 'cannot write a state file; the change is in force but not saved');
      this.failing.set(path, { error, since: cur?.since ?? Date.now(), count: (cur?.count ?? 0) + 1 });
      return false;
    }
  }

  problems(): { path: string; error: string; since: number; count: number }[] {
    return [...this.failing].map(([path, p]) => ({ path, ...p }));
  }
}
