#!/usr/bin/env node
// Prints which folder of src/ imports which (static and dynamic imports, type-only included),
// with the number of import statements per edge: the graph docs/design/architecture.md shows.
//
//   node scripts/import-graph.mjs            a markdown table
//   node scripts/import-graph.mjs --json     {from: {to: count}}
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const src = resolve(dirname(fileURLToPath(import.meta.url)), '../src');

/** The folder a file belongs to: its first path segment under src/ (backend/http → backend). */
const folderOf = (file) => relative(src, file).split('/')[0].replace(/\.ts$/, '');

const edges = {};
for (const name of readdirSync(src, { recursive: true })) {
  if (!name.endsWith('.ts')) continue;
  const file = join(src, name);
  const text = readFileSync(file, 'utf8');
  const from = folderOf(file);
  for (const m of text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*)'(\.{1,2}\/[^']+)'/g)) {
    const to = folderOf(resolve(dirname(file), m[1]));
    if (to === from) continue;
    edges[from] ??= {};
    edges[from][to] = (edges[from][to] ?? 0) + 1;
  }
}

if (process.argv.includes('--json')) {
  console.log(JSON.stringify(edges, null, 2));
} else {
  console.log('| folder | imports from (import statements) |\n| --- | --- |');
  for (const from of Object.keys(edges).sort()) {
    const to = Object.entries(edges[from]).sort(([a], [b]) => a.localeCompare(b));
    console.log(`| \`${from}\` | ${to.map(([t, n]) => `\`${t}\` (${n})`).join(', ')} |`);
  }
}
