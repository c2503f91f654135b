import { execFileSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadJobConfig } from '../../src/config/job-config.js';
import * as protocol from '../../src/protocol/http-protocol.js';
import * as exitCodes from '../../src/cli/exit-codes.js';
import { httpStatusFor } from '../../src/server/http-status.js';
import { errorCodes, type ErrorCode } from '../../src/shared/blockrep-error.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * The reference pages restate what the code defines; these checks fail as soon as the two
 * disagree, so the docs cannot drift silently. Fast: no QEMU, no server.
 */
const ROOT = resolve(import.meta.dirname, '../..');
const doc = (path: string): Promise<string> => readFile(join(ROOT, path), 'utf8');

/** The rows of the first markdown table whose header row starts with `header` (cells trimmed). */
function tableRows(text: string, header: string): string[][] {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.startsWith(header));
  expect(start, `a table starting with "${header}"`).toBeGreaterThanOrEqual(0);
  const rows: string[][] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    rows.push(line.slice(1, line.endsWith('|') ? -1 : undefined).split('|').map((c) => c.trim()));
  }
  return rows;
}

const backticked = (cell: string): string[] => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

/** Every error code is listed in exactly one row, and that row's number is the code's. */
function expectCodeRows(rows: Array<{ number: number; codes: string[] }>, numberFor: (code: ErrorCode) => number, what: string): void {
  const listed = new Map<string, number[]>();
  for (const r of rows) for (const c of r.codes) listed.set(c, [...(listed.get(c) ?? []), r.number]);
  for (const c of listed.keys()) expect(errorCodes as readonly string[], `${c} in the ${what} table is not an error code`).toContain(c);
  for (const code of errorCodes) {
    expect(listed.get(code), `error code ${code} in the ${what} table`).toEqual([numberFor(code)]);
  }
}

describe('docs/reference/exit-codes.md against src/cli/exit-codes.ts', () => {
  it('lists every exit code by constant and number, both ways, and each error code under its exit code', async () => {
    const rows = tableRows(await doc('docs/reference/exit-codes.md'), '| exit | constant |');
    const documented = Object.fromEntries(rows.map((r) => [backticked(r[1]!)[0], Number(r[0])]));
    const defined = Object.fromEntries(Object.entries(exitCodes).filter(([name, v]) => name.startsWith('EXIT_') && typeof v === 'number'));
    expect(documented).toEqual(defined);
    expectCodeRows(
      rows.map((r) => ({ number: Number(r[0]), codes: backticked(r[3] ?? '') })),
      exitCodes.exitCodeFor,
      'exit-code',
    );
  });
});

describe('docs/guide/troubleshooting.md against src/shared/blockrep-error.ts', () => {
  it('has a section for every error code, and none for a code that does not exist', async () => {
    const headings = [...(await doc('docs/guide/troubleshooting.md')).matchAll(/^### `([A-Z_]+)`$/gm)].map((m) => m[1]!);
    expect([...headings].sort()).toEqual([...errorCodes].sort());
  });
});

describe('docs/reference/http-api.md against the server', () => {
  /**
   * No route table is exported: the paths are the *_PATH constants of http-protocol.ts, and the
   * methods are read from the dispatch in repository-server.ts (its `case X_PATH:` branches and
   * their requireMethod, and the method check of the object branch).
   */
  async function routesInCode(): Promise<Set<string>> {
    const paths = Object.entries(protocol).filter(([name, v]) => name.endsWith('_PATH') && typeof v === 'string') as Array<[string, string]>;
    const source = await doc('src/server/repository-server.ts');
    const routes = new Set<string>();
    const dispatched = new Set<string>();
    const objects = /if \(path\.startsWith\((\w+_PATH)\)\) \{([\s\S]*?)\n {2}\}/.exec(source);
    expect(objects, 'the object branch of the dispatch').not.toBeNull();
    dispatched.add(objects![1]!);
    const objectMethods = [...objects![2]!.matchAll(/method !== '([A-Z]+)'/g)].map((m) => m[1]!);
    expect(objectMethods.length).toBeGreaterThan(0);
    for (const m of objectMethods) routes.add(`${m} ${protocol.OBJECTS_PATH}…`);
    for (const branch of source.split(/\n\s+case /).slice(1)) {
      const name = /^(\w+_PATH):/.exec(branch)?.[1];
      if (name === undefined) continue;
      const method = /requireMethod\(method, '([A-Z]+)'/.exec(branch)?.[1];
      expect(method, `the method of ${name}`).toBeDefined();
      dispatched.add(name);
      routes.add(`${method} ${(protocol as Record<string, unknown>)[name] as string}`);
    }
    // A path constant the server does not dispatch (or a dispatch this parse missed) is drift too.
    expect([...dispatched].sort()).toEqual(paths.map(([name]) => name).sort());
    return routes;
  }

  it('has one row per route the server handles, and no other', async () => {
    const rows = tableRows(await doc('docs/reference/http-api.md'), '| method | path |');
    const documented = new Set<string>();
    for (const r of rows) {
      const path = backticked(r[1]!)[0]!.replace(/\?.*$/, '');
      const key = path.startsWith(protocol.OBJECTS_PATH) ? `${protocol.OBJECTS_PATH}…` : path;
      for (const m of r[0]!.split(',')) documented.add(`${m.trim()} ${key}`);
    }
    expect([...documented].sort()).toEqual([...(await routesInCode())].sort());
  });

  it('names the content types and headers of the protocol', async () => {
    const text = await doc('docs/reference/http-api.md');
    for (const name of ['CHUNK_PATCH_TYPE', 'MANIFEST_DELTA_TYPE', 'AGE_HEADER', 'ERROR_CODE_HEADER', 'IF_OLDER_THAN_HEADER', 'REMOVAL_HEADER'] as const) {
      expect(text, `${name} (${protocol[name]})`).toContain(`\`${protocol[name]}\``);
    }
  });

  it('gives each error code the HTTP status of src/server/http-status.ts', async () => {
    const rows = tableRows(await doc('docs/reference/http-api.md'), '| status | error codes |');
    expectCodeRows(
      rows.map((r) => ({ number: Number(/^\d+/.exec(r[0]!)?.[0]), codes: backticked(r[1] ?? '') })),
      httpStatusFor,
      'HTTP status',
    );
  });
});

describe('docs/reference/job-config.md and the example job configuration', () => {
  const EXAMPLE = 'scripts/systemd/blockrep.yaml.example';

  it('links the example file rather than pasting it', async () => {
    const text = await doc('docs/reference/job-config.md');
    const targets = markdownLinks(text).map((t) => relative(ROOT, resolve(ROOT, 'docs/reference', t.split('#')[0]!)));
    expect(targets).toContain(EXAMPLE);
    // Blank lines and trailing spaces aside, no 4 lines of the example may appear in the page.
    const nonBlank = (t: string): string[] => t.split('\n').map((l) => l.trimEnd()).filter((l) => l.trim() !== '');
    const page = `\n${nonBlank(text).join('\n')}\n`;
    const lines = nonBlank(await doc(EXAMPLE));
    for (let i = 0; i + 4 <= lines.length; i++) {
      expect(page.includes(`\n${lines.slice(i, i + 4).join('\n')}\n`), `lines ${i + 1}… of the example pasted into the page`).toBe(false);
    }
  });

  it('the example still loads with the job-config loader', async () => {
    const dir = await tempDir('blockrep-docs-');
    const token = join(dir, 'token');
    await writeFile(token, `brt_${'a'.repeat(43)}\n`, { mode: 0o600 });
    const file = join(dir, 'blockrep.yaml');
    // The example's token file is the one a real host has; everything else is loaded as shipped.
    await writeFile(file, (await doc(EXAMPLE)).replace('/etc/blockrep/token', token));
    const config = await loadJobConfig(file);
    expect(config.vms.length).toBeGreaterThan(0);
  });
});

describe('docs/reference/cli.md against the CLI', () => {
  it('is what scripts/gen-cli-reference.mjs makes from the build of src/ as it is now', async () => {
    // dist/ is built from src/ by the test run's global setup, so this is the code as it is.
    const out = join(await tempDir('blockrep-docs-'), 'cli.md');
    execFileSync(process.execPath, [join(ROOT, 'scripts/gen-cli-reference.mjs'), '--out', out], { cwd: ROOT });
    expect(await doc('docs/reference/cli.md'), 'docs/reference/cli.md is stale: run npm run docs:cli').toBe(await readFile(out, 'utf8'));
  });
});

/** Link targets of a markdown text, outside fenced code blocks. */
function markdownLinks(text: string): string[] {
  const prose = text.replace(/^```[\s\S]*?^```/gm, '');
  return [...prose.matchAll(/\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]!);
}

/** GitHub's anchors for the headings of a markdown text. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of text.replace(/^```[\s\S]*?^```/gm, '').matchAll(/^#{1,6} +(.+?) *$/gm)) {
    const base = m[1]!.toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

describe('links in README.md and docs/', () => {
  it('every relative link points at an existing file (and heading)', async () => {
    const files = ['README.md', 'CHANGELOG.md', ...(await readdir(join(ROOT, 'docs'), { recursive: true })).filter((f) => f.endsWith('.md')).map((f) => join('docs', f))];
    expect(files.length).toBeGreaterThan(10);
    const dead: string[] = [];
    for (const file of files) {
      const text = await doc(file);
      for (const target of markdownLinks(text)) {
        if (/^[a-z]+:/i.test(target)) continue; // http(s):, mailto:
        if (target.startsWith('/')) {
          dead.push(`${file}: ${target} (absolute)`);
          continue;
        }
        const [path, anchor] = target.split('#') as [string, string | undefined];
        const abs = path === '' ? join(ROOT, file) : resolve(ROOT, dirname(file), path);
        if (!existsSync(abs)) {
          dead.push(`${file}: ${target}`);
          continue;
        }
        if (anchor !== undefined && abs.endsWith('.md') && statSync(abs).isFile() && !anchors(await readFile(abs, 'utf8')).has(anchor)) {
          dead.push(`${file}: ${target} (no such heading)`);
        }
      }
    }
    expect(dead).toEqual([]);
  });
});
