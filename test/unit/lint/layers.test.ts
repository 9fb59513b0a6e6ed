// The layer rule (eslint.config.js) as a newcomer would meet it: an import that
// climbs the layers fails lint with a message that says why; one that goes down passes.
import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../../../lib/project-root.js';

const eslint = new ESLint({ cwd: projectRoot() });

async function lint(file: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: `${projectRoot()}/${file}` });
  return result.messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

describe('import layers', () => {
  it('refuses imports against the layers', async () => {
    const cases: [string, string][] = [
      ['mesh/example.ts', "import { Router } from '../router/router.js';"],
      ['lib/example.ts', "import { parseCidr } from '../net/addr.js';"],
      ['net/example.ts', "import { Mesh } from '../mesh/index.js';"],
      ['datapath/ovs/example.ts', "import { PolicyEngine } from '../../policy/engine.js';"],
      ['ipam/example.ts', "import type { Datapath } from '../datapath/datapath.js';"],
      ['router/example.ts', "import { main } from '../cli/weft.js';"],
      ['policy/example.ts', "export { ServiceEngine } from '../services/engine.js';"],
    ];
    for (const [file, code] of cases) {
      const messages = await lint(file, `${code}\nexport const x = 1;\n`);
      expect(messages, `${file}: ${code}`).toHaveLength(1);
      expect(messages[0]).toMatch(/may not import .*imports run one way/);
    }
  }, 60_000);

  it('lets imports go down the layers', async () => {
    const cases: [string, string][] = [
      ['cli/example.ts', "import { renderStatus } from '../router/render.js';"],
      ['router/api/example.ts', "import type { Datapath } from '../../datapath/datapath.js';"],
      ['services/example.ts', "import { containerMatches } from '../policy/model.js';"],
      ['mesh/example.ts', "import { parseCidr } from '../net/addr.js';"],
      ['datapath/vxlan/example.ts', "import { BRIDGE } from '../bridge.js';"],
    ];
    for (const [file, code] of cases)
      expect(await lint(file, `${code}\nexport const x = 1;\n`), `${file}: ${code}`).toEqual([]);
  }, 60_000);
});
