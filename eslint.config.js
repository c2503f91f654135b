// ESLint: typescript-eslint's recommended rules, and the layers of src/ as an import rule.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * Which folders of src/ each folder may import (docs/design/architecture.md). Imports run one
 * way: cli → jobs → app → libvirt → hypervisor | image | scan | manifest | repository → backend → shared.
 * Another folder is reached only through its index.ts (backend/http and backend/s3 have their own,
 * loaded lazily).
 */
const layers = {
  shared: [],
  protocol: ['shared'],
  tokens: ['shared', 'protocol'],
  crypto: ['shared'],
  chunk: ['shared', 'crypto'],
  image: ['shared', 'nbd'],
  hypervisor: ['shared'],
  nbd: ['shared'],
  libvirt: ['shared', 'hypervisor', 'nbd'],
  backend: ['shared', 'protocol'],
  manifest: ['shared', 'backend'],
  scan: ['shared', 'chunk', 'crypto', 'image'],
  repository: ['shared', 'backend', 'chunk', 'crypto', 'manifest'],
  app: ['shared', 'backend', 'chunk', 'crypto', 'image', 'manifest', 'scan', 'repository', 'hypervisor', 'libvirt', 'nbd'],
  config: ['shared', 'protocol', 'image', 'repository'],
  jobs: ['shared', 'app', 'config', 'hypervisor', 'libvirt', 'image', 'repository'],
  server: ['shared', 'protocol', 'tokens', 'backend', 'chunk', 'crypto', 'manifest', 'repository'],
  cli: ['shared', 'app', 'config', 'crypto', 'jobs', 'image', 'repository', 'server', 'tokens'],
};
const folders = Object.keys(layers);

function layerRules(folder) {
  const depth = folder === 'cli' ? ['../', '../../'] : ['../'];
  const patterns = [];
  for (const other of folders) {
    if (other === folder) continue;
    const allowed = layers[folder].includes(other);
    for (const up of depth) {
      if (!allowed) {
        patterns.push({ group: [`${up}${other}`, `${up}${other}/**`], message: `${folder} may not import ${other} (see the layers in eslint.config.js)` });
      } else {
        patterns.push({
          group: [`${up}${other}/**`, `!${up}${other}/index.js`, `!${up}${other}/*/index.js`],
          message: `import ${other} through its index.ts, not its files`,
        });
      }
    }
  }
  return { 'no-restricted-imports': ['error', { patterns }] };
}

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'bench/work/**', '.cache/**', 'native/build/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // An empty catch says "this may fail and it does not matter" (clean-up paths).
      'no-empty': ['error', { allowEmptyCatch: true }],
    },
  },
  {
    // Tests speak raw protocols (QMP, HTTP) whose replies are loose JSON, and match ANSI escapes.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off', 'no-control-regex': 'off' },
  },
  ...folders.map((folder) => ({ files: [`src/${folder}/**/*.ts`], rules: layerRules(folder) })),
  {
    files: ['**/*.mjs', '**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', URL: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', performance: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly', TextDecoder: 'readonly', TextEncoder: 'readonly', queueMicrotask: 'readonly', setImmediate: 'readonly', fetch: 'readonly', structuredClone: 'readonly' } },
  },
);
