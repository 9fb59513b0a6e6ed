// Small JSON state files in the data dir, written so that a crash (even kill -9)
// leaves the old file or the new one, never half of one.
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';

/** Writes `value` as JSON to a temporary file beside `path`, then renames it over `path`. */
export function writeJsonAtomically(path: string, value: unknown, mode?: number): void {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n', mode === undefined ? undefined : { mode });
  renameSync(tmp, path);
}

/** A JSON list from `path`; missing or unreadable is empty. */
export function readJsonList<T>(path: string): T[] {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    return Array.isArray(v) ? (v as T[]) : [];
  } catch {
    return [];
  }
}
