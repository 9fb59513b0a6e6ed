// Lint: TypeScript's recommended rules, and the layers as a rule. Imports run one
// way: lib, net, native <- mesh <- components <- router <- cli (README.md, Tour).
// Among the components the order is ipam, dns <- datapath <- policy <- services
// <- plugin, so they form no cycle either. Formatting is Prettier's (npm run format).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const TOP = [
  'lib',
  'net',
  'native',
  'mesh',
  'ipam',
  'dns',
  'datapath',
  'policy',
  'services',
  'plugin',
  'router',
  'cli',
  'test',
  'bench',
  'examples',
];

/** What each folder may import from the others (itself always). */
const MAY_IMPORT = {
  lib: [],
  net: ['lib'],
  native: ['lib'],
  mesh: ['lib', 'net', 'native'],
  ipam: ['lib', 'net', 'native', 'mesh'],
  dns: ['lib', 'net', 'native', 'mesh'],
  datapath: ['lib', 'net', 'native', 'mesh', 'ipam', 'dns'],
  policy: ['lib', 'net', 'native', 'mesh', 'ipam', 'dns', 'datapath'],
  services: ['lib', 'net', 'native', 'mesh', 'ipam', 'dns', 'datapath', 'policy'],
  plugin: ['lib', 'net', 'native', 'mesh', 'ipam', 'dns', 'datapath', 'policy', 'services'],
  router: ['lib', 'net', 'native', 'mesh', 'ipam', 'dns', 'datapath', 'policy', 'services', 'plugin'],
  cli: ['lib', 'net', 'native', 'mesh', 'ipam', 'dns', 'datapath', 'policy', 'services', 'plugin', 'router'],
};

const layers = Object.entries(MAY_IMPORT).map(([folder, allowed]) => {
  const forbidden = TOP.filter((t) => t !== folder && !allowed.includes(t));
  return {
    files: [`${folder}/**/*.ts`],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: forbidden.map((f) => ({
            // A relative path that climbs out of this folder into that one.
            regex: `^(\\.\\./)+${f}/`,
            message: `${folder}/ may not import ${f}/: imports run one way (lib, net, native <- mesh <- ipam, dns <- datapath <- policy <- services <- plugin <- router <- cli; see the Tour in README.md)`,
          })),
        },
      ],
    },
  };
});

export default tseslint.config(
  {
    ignores: ['dist/**', 'node_modules/**', 'native/build/**', 'test-artifacts/**', '**/*.js', '**/*.mjs', '**/*.cjs'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
      // Empty catch blocks say why in a comment; an empty function is a deliberate no-op.
      'no-empty': ['error', { allowEmptyCatch: false }],
      '@typescript-eslint/no-empty-function': 'off',
    },
  },
  ...layers,
);
