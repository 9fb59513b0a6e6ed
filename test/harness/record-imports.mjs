// node --import this file: every module the program imports (ES imports, the
// CommonJS files and packages it loads included) is appended, as a URL per line, to the
// file named by WEFT_RECORD_IMPORTS. Tests use it to check what a command loads.
import { appendFileSync } from 'node:fs';
import Module, { register } from 'node:module';

register('./record-imports-hooks.mjs', import.meta.url);

// CommonJS files (the bundled CLI entry, CommonJS packages) are recorded as they load.
const load = Module._load;
Module._load = function (request, parent, isMain) {
  if (process.env.WEFT_RECORD_IMPORTS && !request.startsWith('node:')) {
    try {
      appendFileSync(process.env.WEFT_RECORD_IMPORTS, `file://${Module._resolveFilename(request, parent, isMain)}\n`);
    } catch {
      /* unresolvable: load() says so */
    }
  }
  return load.apply(this, arguments);
};
