// node --import this file: every module the program imports (ES imports, the
// CommonJS packages they import included) is appended, as a URL per line, to the
// file named by WEFT_RECORD_IMPORTS. Tests use it to check what a command loads.
import { register } from 'node:module';

register('./record-imports-hooks.mjs', import.meta.url);
