import { isMap, isScalar, isSeq, type Document, type LineCounter, type Node } from 'yaml';

/**
 * Where a problem sits in a YAML (or JSON) file, and how it is said: `FILE:LINE:COL PATH:
 * message`, the form editors and compilers use, so that an administrator can jump to it.
 */

export type ConfigPath = ReadonlyArray<string | number>;

export interface ConfigIssue {
  line: number;
  column: number;
  /** `vms[1].qmp` */
  path: string;
  message: string;
}

export function formatConfigPath(path: ConfigPath): string {
  let out = '';
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : out === '' ? seg : `.${seg}`;
  return out === '' ? '(top level)' : out;
}

export function formatIssue(file: string, issue: ConfigIssue): string {
  return `${file}:${issue.line}:${issue.column} ${issue.path}: ${issue.message}`;
}

/**
 * Finds the position of `path` in the parsed document: the value's node, or (with `key`) the
 * key itself — an unknown key is pointed at where it is written. When the path does not exist
 * (a missing key), the nearest node that does is pointed at.
 */
export function locate(doc: Document, lines: LineCounter, path: ConfigPath, options: { key?: boolean } = {}): { line: number; column: number } {
  let node: unknown = doc.contents;
  let offset = (node as Node | null)?.range?.[0] ?? 0;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i]!;
    let next: unknown;
    let keyOffset: number | undefined;
    if (isMap(node) && typeof seg === 'string') {
      const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : p.key) === seg);
      if (pair) {
        next = pair.value;
        keyOffset = isScalar(pair.key) ? pair.key.range?.[0] : undefined;
      }
    } else if (isSeq(node) && typeof seg === 'number') {
      next = node.items[seg];
    }
    if (next === undefined) break;
    const last = i === path.length - 1;
    const at = last && options.key && keyOffset !== undefined ? keyOffset : ((next as Node | null)?.range?.[0] ?? keyOffset);
    if (at !== undefined) offset = at;
    node = next;
  }
  const pos = lines.linePos(offset);
  return { line: pos.line, column: pos.col };
}

/** Edit distance counting a swap of two neighbours as one edit (`qpm` → `qmp`); small strings only. */
function distance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i]!;
      row[j] = Math.min(d[i - 1]![j]! + 1, row[j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The known key an unknown one was probably meant to be: `token_file` → `tokenFile`, `qpm` → `qmp`. */
export function didYouMean(unknown: string, known: readonly string[]): string | undefined {
  const norm = (s: string): string => s.toLowerCase().replace(/[-_]/g, '');
  const same = known.find((k) => norm(k) === norm(unknown));
  if (same !== undefined) return same;
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = distance(norm(unknown), norm(k));
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance <= Math.max(1, Math.floor(best.length / 3)) ? best : undefined;
}

/** How a value found in the file is named in "expected …, got …". */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'an empty value';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `the text ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  if (typeof v === 'number') return `the number ${v}`;
  if (typeof v === 'boolean') return `${v}`;
  return typeof v;
}
