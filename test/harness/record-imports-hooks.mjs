// The resolve hook of record-imports.mjs (module hooks run on their own thread).
import { appendFileSync } from 'node:fs';

export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  if (process.env.WEFT_RECORD_IMPORTS) appendFileSync(process.env.WEFT_RECORD_IMPORTS, `${resolved.url}\n`);
  return resolved;
}
