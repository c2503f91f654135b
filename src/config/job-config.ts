import { dirname, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import type { ImageFormat } from '../image/index.js';
import { BlockrepError, readSmallFile, systemErrorCode, defaultDiskIdForImage, diskIdProblem, vmNameProblem, parseSize, checkBlockSize, parseDuration, SYNC_LEVELS, type SyncLevel } from '../shared/index.js';
import { readTokenFile } from '../protocol/index.js';
import { describeValue, didYouMean, formatConfigPath, formatIssue, locate, type ConfigIssue, type ConfigPath } from './config-issues.js';
import { isEmptyPolicy, retentionPolicySchema, type RetentionPolicy } from '../repository/index.js';

/**
 * The job configuration of `blockrep run`: one repository, defaults, and the VMs to back up
 * every night. YAML (JSON is YAML too). Every mistake is reported as `FILE:LINE:COL PATH:
 * what is wrong — what to write`, every mistake found at once (the checks across entries —
 * names, disk ids, files — once the file has the right shape), before anything runs. Relative paths
 * are relative to the config file's folder, so a config means the same from any working
 * directory (systemd, cron).
 */

export type Quiesce = 'auto' | 'require' | 'off';

export interface JobRepository {
  /** A directory (absolute), an http(s):// URL, or s3://BUCKET[/PREFIX]. */
  location: string;
  tokenFile?: string;
  cacert?: string;
  /** Encrypted repositories: the file whose first line is the passphrase. */
  passwordFile?: string;
  /** s3:// repositories: the endpoint of a non-AWS server. */
  s3Endpoint?: string;
  /** Bytes per second for the whole run (one limit shared by every VM: they share the link). */
  bwlimit?: number;
  /** A directory: how new chunks become durable before a publish (shared/sync-level.ts). */
  syncLevel?: SyncLevel;
}

interface VmJobBase {
  name: string;
  /** Position in `vms`. */
  index: number;
  blockSize?: number;
  compress: boolean;
  retention?: RetentionPolicy;
  /** Live VMs: read every block this run, whatever changed-block tracking says. */
  fullScan?: boolean;
  /** Live VMs: a full read at least this often (ms); 0: never forced by age. */
  fullScanEveryMs?: number;
  /** `FILE:LINE:COL vms[i].key` for messages about this VM. */
  where: (...path: ConfigPath) => string;
}

/** `argv`: program and arguments, run without a shell; `shell`: a command line for /bin/sh -c. */
export type HookCommand = { argv: string[] } | { shell: string };

/** Commands run on the backup host around a live VM's freeze (BLOCKREP_VM, BLOCKREP_PHASE set). */
export interface JobHooks {
  beforeFreeze?: HookCommand;
  afterThaw?: HookCommand;
  timeoutMs: number;
  onFailure: 'abort' | 'continue';
}

export const DEFAULT_HOOK_TIMEOUT_MS = 30_000;
export const MAX_HOOK_TIMEOUT_MS = 600_000;

export interface LiveVmJob extends VmJobBase {
  kind: 'live';
  qmpSocket: string;
  qgaSocket?: string;
  /** Drive or device ids; default every writable disk. */
  disks?: string[];
  quiesce: Quiesce;
  hooks?: JobHooks;
}

/** A running libvirt domain, backed up through virsh. */
export interface LibvirtVmJob extends VmJobBase {
  kind: 'libvirt';
  domain: string;
  /** snapshot | backup-api | auto (default: auto, backup-api where libvirt and the disks allow it). */
  method?: 'snapshot' | 'backup-api' | 'auto';
  /** libvirt URI; default: libvirt's default. */
  connect?: string;
  /** Targets (vda); default every writable file disk. */
  disks?: string[];
  quiesce: Quiesce;
}

export interface ImageJob {
  path: string;
  format?: ImageFormat;
  diskId: string;
  where: string;
}

export interface ImageVmJob extends VmJobBase {
  kind: 'image';
  images: ImageJob[];
}

export type VmJob = LiveVmJob | LibvirtVmJob | ImageVmJob;

export interface JobConfig {
  /** The file as given. */
  file: string;
  repository: JobRepository;
  parallel: number;
  vms: VmJob[];
}

/**
 * Two VMs at a time: each backup already reads with up to two scan threads and keeps up to 8
 * chunk writes in flight, so a third VM adds memory (a first full backup peaks near 300 MiB: bench/results/scan.md)
 * and disk contention rather than speed on a small host; two lets one VM's freeze, snapshot
 * and commit overlap another's upload.
 */
export const DEFAULT_PARALLEL = 2;
export const MAX_PARALLEL = 16;
/**
 * A job config is a few KiB; parsing costs ~100 bytes of memory per byte, so a cap on the file
 * and on the VMs keeps a wrong or hostile file from exhausting memory before any check.
 */
export const MAX_CONFIG_BYTES = 1024 * 1024;
export const MAX_VMS = 1000;
/** Alias expansions a config may use: `defaults` makes most of them unnecessary. */
const MAX_ALIAS_COUNT = 100;

/** What each key expects, for "expected …, got … — write e.g. …" messages. */
const HINTS: Record<string, { expected: string; example: string }> = {
  repository: { expected: 'a mapping with url (and tokenFile for a server)', example: 'repository: {url: https://backup.example:8417, tokenFile: /etc/blockrep/token}' },
  url: { expected: 'a repository directory, http(s):// URL or s3://BUCKET[/PREFIX]', example: 'url: https://backup.example:8417' },
  s3: { expected: 'a mapping with the endpoint of an S3 server other than AWS', example: 's3: {endpoint: http://127.0.0.1:7480}' },
  endpoint: { expected: 'the http(s):// URL of the S3 server', example: 'endpoint: https://s3.example.net' },
  tokenFile: { expected: 'the path of a file holding the access token', example: 'tokenFile: /etc/blockrep/token' },
  passwordFile: { expected: "the path of a file whose first line is an encrypted repository's passphrase", example: 'passwordFile: /etc/blockrep/passphrase' },
  cacert: { expected: 'the path of a PEM CA certificate', example: 'cacert: /etc/blockrep/ca.pem' },
  syncLevel: { expected: `${SYNC_LEVELS.join(' or ')}`, example: 'syncLevel: file' },
  defaults: { expected: 'a mapping of settings for every VM', example: 'defaults: {blockSize: 256K, bwlimit: 20M}' },
  parallel: { expected: `a whole number of VMs backed up at once, 1 to ${MAX_PARALLEL}`, example: 'parallel: 2' },
  vms: { expected: 'a list of VMs', example: 'vms: [{name: web01, qmp: /run/qemu/web01.qmp}]' },
  name: { expected: 'the VM\'s name (letters, digits, ".", "_", "-"; the first part of its disk ids)', example: 'name: web01' },
  qmp: { expected: 'a path to a QMP socket', example: 'qmp: /run/qemu/web01.qmp' },
  domain: { expected: 'the name of a libvirt domain', example: 'domain: web01' },
  connect: { expected: 'a libvirt URI', example: 'connect: qemu:///system' },
  method: { expected: 'snapshot, backup-api or auto: how a libvirt domain is backed up', example: 'method: auto' },
  qga: { expected: "a path to the guest agent's socket", example: 'qga: /run/qemu/web01.qga' },
  disks: { expected: 'a list of drive or device ids', example: 'disks: [virtio0, virtio1]' },
  images: { expected: 'a list of image files (or mappings with path, disk, format)', example: 'images: [/var/lib/images/archive.qcow2]' },
  path: { expected: 'the path of an image file or block device', example: 'path: /var/lib/images/archive.qcow2' },
  disk: { expected: 'a disk name (letters, digits, ".", "_", "-", "/")', example: 'disk: root' },
  format: { expected: 'raw or qcow2', example: 'format: qcow2' },
  blockSize: { expected: 'a block size, a power of two from 4K to 16M', example: 'blockSize: 256K' },
  bwlimit: { expected: 'a rate in bytes per second, at least 1K', example: 'bwlimit: 20M' },
  compress: { expected: 'true or false', example: 'compress: true' },
  quiesce: { expected: 'auto, require or off', example: 'quiesce: auto' },
  fullScan: { expected: 'true or false', example: 'fullScan: true' },
  fullScanEvery: { expected: 'a duration (0 for never)', example: 'fullScanEvery: 7d' },
  hooks: { expected: 'a mapping with beforeFreeze, afterThaw, timeout, onFailure', example: 'hooks: {beforeFreeze: [/usr/local/bin/app-pause], afterThaw: [/usr/local/bin/app-resume], timeout: 30s}' },
  beforeFreeze: { expected: 'a command: a list (program and arguments, no shell) or a string (run by /bin/sh -c)', example: 'beforeFreeze: [/usr/local/bin/app-pause, --quick]' },
  afterThaw: { expected: 'a command: a list (program and arguments, no shell) or a string (run by /bin/sh -c)', example: 'afterThaw: [/usr/local/bin/app-resume]' },
  timeout: { expected: `a duration above 0 and at most ${MAX_HOOK_TIMEOUT_MS / 60_000}m`, example: 'timeout: 30s' },
  onFailure: { expected: 'abort or continue', example: 'onFailure: abort' },
  retention: { expected: 'a retention policy (keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly)', example: 'retention: {keepDaily: 7, keepWeekly: 4}' },
  keepLast: { expected: 'a whole number of versions, 0 or more', example: 'keepLast: 3' },
  keepHourly: { expected: 'a whole number of hours, 0 or more', example: 'keepHourly: 24' },
  keepDaily: { expected: 'a whole number of days, 0 or more', example: 'keepDaily: 7' },
  keepWeekly: { expected: 'a whole number of weeks, 0 or more', example: 'keepWeekly: 4' },
  keepMonthly: { expected: 'a whole number of months, 0 or more', example: 'keepMonthly: 12' },
  keepYearly: { expected: 'a whole number of years, 0 or more', example: 'keepYearly: 2' },
};

function hintFor(path: ConfigPath): { expected: string; example: string } | undefined {
  for (let i = path.length - 1; i >= 0; i--) {
    const seg = path[i];
    if (typeof seg === 'string') return HINTS[seg];
  }
  return undefined;
}

/** A size written as a number of bytes or with a unit (`256K`, `20M`). */
function sizeField(check: (n: number) => void) {
  return z.unknown().transform((v, ctx) => {
    let n: number | undefined;
    if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) n = v;
    else if (typeof v === 'string') {
      try {
        n = parseSize(v);
      } catch {
        n = undefined;
      }
    }
    if (n === undefined) {
      ctx.addIssue({ code: 'custom', message: '', params: { expectedGot: true } });
      return z.NEVER;
    }
    try {
      check(n);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: '', params: { expectedGot: true, why: err instanceof Error ? err.message : String(err) } });
      return z.NEVER;
    }
    return n;
  });
}

const blockSizeField = sizeField(checkBlockSize);
const bwlimitField = sizeField((n) => {
  if (n < 1024) throw new Error('below 1K bytes per second');
});
const quiesceField = z.enum(['auto', 'require', 'off']);
const fullScanEveryField = z.unknown().transform((v, ctx) => {
  let ms: number | undefined;
  try {
    ms = v === 0 || v === '0' ? 0 : typeof v === 'string' ? parseDuration(v, 'fullScanEvery') : undefined;
  } catch {
    ms = undefined;
  }
  if (ms === undefined || ms < 0) {
    ctx.addIssue({ code: 'custom', message: '', params: { expectedGot: true } });
    return z.NEVER;
  }
  return ms;
});
const pathField = z.string().min(1);
const hookCommandField = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);
const hookTimeoutField = z.unknown().transform((v, ctx) => {
  let ms: number | undefined;
  try {
    ms = typeof v === 'string' ? parseDuration(v, 'timeout') : undefined;
  } catch {
    ms = undefined;
  }
  if (ms === undefined || ms <= 0 || ms > MAX_HOOK_TIMEOUT_MS) {
    ctx.addIssue({ code: 'custom', message: '', params: { expectedGot: true } });
    return z.NEVER;
  }
  return ms;
});
const hooksField = z.strictObject({
  beforeFreeze: hookCommandField.optional(),
  afterThaw: hookCommandField.optional(),
  timeout: hookTimeoutField.optional(),
  onFailure: z.enum(['abort', 'continue']).optional(),
});
const retentionField = retentionPolicySchema.superRefine((p, ctx) => {
  if (isEmptyPolicy(p)) {
    ctx.addIssue({ code: 'custom', message: 'an empty retention policy would remove every version but the latest; give at least one keep rule above 0 — write e.g. retention: {keepDaily: 7, keepWeekly: 4}' });
  }
});

const imageSchema = z.preprocess(
  (v) => (typeof v === 'string' ? { path: v } : v),
  z.strictObject({ path: pathField, disk: z.string().optional(), format: z.enum(['raw', 'qcow2']).optional() }),
);

const vmSchema = z.strictObject({
  // Optional for a libvirt domain, whose name it then is.
  name: z.string().optional(),
  qmp: pathField.optional(),
  domain: z.string().min(1).optional(),
  connect: z.string().min(1).optional(),
  method: z.enum(['snapshot', 'backup-api', 'auto']).optional(),
  qga: pathField.optional(),
  disks: z.array(z.string().min(1)).min(1).optional(),
  quiesce: quiesceField.optional(),
  hooks: hooksField.optional(),
  fullScan: z.boolean().optional(),
  fullScanEvery: fullScanEveryField.optional(),
  images: z.array(imageSchema).min(1).optional(),
  blockSize: blockSizeField.optional(),
  compress: z.boolean().optional(),
  retention: retentionField.optional(),
});

const jobConfigSchema = z.strictObject({
  repository: z.strictObject({
    url: z.string().min(1),
    tokenFile: pathField.optional(),
    passwordFile: pathField.optional(),
    cacert: pathField.optional(),
    s3: z.strictObject({ endpoint: z.url({ protocol: /^https?$/ }) }).optional(),
    syncLevel: z.enum(SYNC_LEVELS).optional(),
  }),
  defaults: z
    .strictObject({
      blockSize: blockSizeField.optional(),
      bwlimit: bwlimitField.optional(),
      compress: z.boolean().optional(),
      quiesce: quiesceField.optional(),
      hooks: hooksField.optional(),
      fullScan: z.boolean().optional(),
      fullScanEvery: fullScanEveryField.optional(),
      retention: retentionField.optional(),
    })
    .optional(),
  parallel: z.number().int().min(1).max(MAX_PARALLEL).optional(),
  vms: z.array(vmSchema).min(1).max(MAX_VMS),
});

type RawJobConfig = z.infer<typeof jobConfigSchema>;

/** The keys each mapping may hold, for "did you mean". */
function knownKeysAt(path: ConfigPath): string[] {
  const p = path.filter((s) => typeof s === 'string');
  const last = p[p.length - 1];
  if (p.length === 0) return Object.keys(jobConfigSchema.shape);
  if (last === 'repository') return ['url', 'tokenFile', 'cacert', 'passwordFile', 's3', 'syncLevel'];
  if (last === 's3') return ['endpoint'];
  if (last === 'defaults') return ['blockSize', 'bwlimit', 'compress', 'quiesce', 'hooks', 'fullScan', 'fullScanEvery', 'retention'];
  if (last === 'hooks') return ['beforeFreeze', 'afterThaw', 'timeout', 'onFailure'];
  if (last === 'retention') return ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'];
  if (last === 'images') return ['path', 'disk', 'format'];
  if (last === 'vms') return Object.keys(vmSchema.shape);
  return [];
}

function valueAt(data: unknown, path: ConfigPath): unknown {
  let v = data;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

/** Turns zod's issues into messages that say what to write. */
function explain(issue: z.core.$ZodIssue, data: unknown): Array<{ path: ConfigPath; key: boolean; message: string }> {
  const path = issue.path.filter((s): s is string | number => typeof s !== 'symbol');
  const hint = hintFor(path);
  const eg = hint ? ` — write e.g. ${hint.example}` : '';
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => {
      const known = knownKeysAt(path);
      const guess = didYouMean(key, known);
      let message = `unknown key "${key}"`;
      if (key === 'bwlimit' && path[0] === 'vms') message += ': the bandwidth limit is for the whole run (one link), set it in defaults.bwlimit';
      else if (guess !== undefined) message += ` — did you mean "${guess}"?`;
      else if (known.length > 0) message += ` (known here: ${known.join(', ')})`;
      return { path: [...path, key], key: true, message };
    });
  }
  const value = valueAt(data, path);
  if (value === undefined && issue.code === 'invalid_type') {
    const key = path[path.length - 1];
    return [{ path, key: false, message: `missing${typeof key === 'string' ? ` key "${key}"` : ''}: expected ${hint?.expected ?? issue.expected}${eg}` }];
  }
  if (issue.code === 'custom' && issue.params?.expectedGot !== true) return [{ path, key: false, message: issue.message }];
  const why = issue.code === 'custom' && typeof issue.params?.why === 'string' ? ` (${issue.params.why})` : '';
  const expected = hint?.expected ?? (issue.code === 'invalid_type' ? issue.expected : 'another value');
  if (issue.code === 'too_big' && Array.isArray(value) && path.length === 1 && path[0] === 'vms') {
    return [{ path, key: false, message: `${value.length} VMs: a job configuration holds at most ${MAX_VMS}; split them over several configurations (one run each)` }];
  }
  if (issue.code === 'too_small' && Array.isArray(value)) return [{ path, key: false, message: `the list is empty: expected ${expected}${eg}` }];
  if (issue.code === 'too_small' && typeof value === 'string') return [{ path, key: false, message: `empty: expected ${expected}${eg}` }];
  return [{ path, key: false, message: `expected ${expected}, got ${describeValue(value)}${why}${eg}` }];
}

function configError(file: string, issues: ConfigIssue[]): BlockrepError {
  const lines = issues.map((i) => formatIssue(file, i));
  const message = lines.length === 1 ? lines[0]! : `${file}: ${lines.length} problems in the job configuration:\n  ${lines.join('\n  ')}`;
  return new BlockrepError('CONFIG_INVALID', message, { details: { file, issues } });
}

/** Reads, parses and checks a job configuration; CONFIG_INVALID with every problem found. */
export async function loadJobConfig(file: string): Promise<JobConfig> {
  let text: string;
  try {
    text = (await readSmallFile(file, MAX_CONFIG_BYTES)).toString('utf8');
  } catch (err) {
    const sys = systemErrorCode(err);
    const why =
      sys === 'ENOENT' ? 'it does not exist'
      : sys === 'EACCES' || sys === 'EPERM' ? 'permission denied'
      : sys === 'EISDIR' ? 'it is a folder'
      : sys === 'EFBIG' ? `it is larger than ${MAX_CONFIG_BYTES} bytes (1 MiB), the most a job configuration may be`
      : String(err);
    throw new BlockrepError(sys === 'ENOENT' ? 'USAGE' : 'CONFIG_INVALID', `cannot read the job configuration ${file}: ${why}`, { cause: err });
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const issues: ConfigIssue[] = [];
  for (const e of doc.errors) {
    const pos = e.linePos?.[0] ?? lines.linePos(e.pos[0]);
    issues.push({ line: pos.line, column: pos.col, path: '(syntax)', message: `not valid YAML: ${e.message.split('\n')[0]}` });
  }
  if (issues.length > 0) throw configError(file, issues);
  let data: unknown;
  try {
    // Aliases expand when the document becomes data: a few lines of nested aliases (a "billion
    // laughs") would become billions of nodes. The yaml package stops past maxAliasCount.
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (err) {
    if (!(err instanceof ReferenceError)) throw err;
    throw configError(file, [{ line: 1, column: 1, path: '(top level)', message: `its aliases (*name) expand too far (${err.message.split('\n')[0]}); write the values out, or use fewer aliases` }]);
  }
  if (data === null || data === undefined) {
    throw configError(file, [{ line: 1, column: 1, path: '(top level)', message: 'the file is empty: expected a mapping with repository and vms — see docs/guide/nightly-jobs.md' }]);
  }
  const at = (path: ConfigPath, key = false): { line: number; column: number; path: string } => ({ ...locate(doc, lines, path, { key }), path: formatConfigPath(path) });
  const parsed = jobConfigSchema.safeParse(data);
  if (!parsed.success) {
    // A check of a whole mapping (an empty retention policy) says nothing new when a key inside it is wrong.
    const all = parsed.error.issues;
    const inner = (i: z.core.$ZodIssue): boolean =>
      i.code === 'custom' && all.some((o) => o.code !== 'custom' && o.path.length >= i.path.length && i.path.every((seg, k) => o.path[k] === seg));
    for (const issue of all) {
      if (inner(issue)) continue;
      for (const e of explain(issue, data)) issues.push({ ...at(e.path, e.key), message: e.message });
    }
    issues.sort((a, b) => a.line - b.line || a.column - b.column);
    throw configError(file, issues);
  }
  const base = dirname(resolve(file));
  const where = (path: ConfigPath): string => formatIssue(file, { ...at(path), message: '' }).slice(0, -2);
  const config = normalise(parsed.data, base, file, where, (path, message) => issues.push({ ...at(path), message }));
  await checkFiles(config, parsed.data, (path, message) => issues.push({ ...at(path), message }));
  if (issues.length > 0) {
    issues.sort((a, b) => a.line - b.line || a.column - b.column);
    throw configError(file, issues);
  }
  return config;
}

function normalise(raw: RawJobConfig, base: string, file: string, where: (path: ConfigPath) => string, problem: (path: ConfigPath, message: string) => void): JobConfig {
  const remote = /^https?:\/\//i.test(raw.repository.url);
  const s3 = /^s3:\/\//i.test(raw.repository.url);
  if (!remote && !s3 && /^[a-z][a-z0-9+.-]*:\/\//i.test(raw.repository.url)) {
    problem(['repository', 'url'], `repository URLs are http://, https:// or s3://, not ${raw.repository.url.split('://')[0]}:// — write e.g. url: https://backup.example:8417, s3://bucket/prefix or a directory`);
  }
  if (raw.repository.s3 !== undefined && !s3) problem(['repository', 's3'], 's3 settings are for s3:// repositories only; remove them, or make url s3://BUCKET[/PREFIX]');
  if (raw.repository.syncLevel !== undefined && (remote || s3)) {
    problem(['repository', 'syncLevel'], 'syncLevel is for a repository in a directory; a blockrep serve takes its own (serve --sync-level), and S3 makes every object durable when it answers');
  }
  if (s3 && !/^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/[A-Za-z0-9._/-]*)?$/.test(raw.repository.url)) {
    problem(['repository', 'url'], `${raw.repository.url} is not s3://BUCKET[/PREFIX] (bucket: lower-case letters, digits, dots and hyphens)`);
  }
  if (!remote) {
    if (raw.repository.tokenFile !== undefined) problem(['repository', 'tokenFile'], `a token file is for http(s):// repositories only; remove it, or make url a server URL${s3 ? ' (s3:// takes its credentials from the AWS chain: AWS_ACCESS_KEY_ID…, AWS_PROFILE)' : ''}`);
    if (raw.repository.cacert !== undefined) problem(['repository', 'cacert'], 'a CA certificate is for https:// repositories only');
  } else if (raw.repository.cacert !== undefined && !/^https:/i.test(raw.repository.url)) {
    problem(['repository', 'cacert'], 'a CA certificate is for https:// repositories only; use an https:// url');
  }
  const defaults = raw.defaults ?? {};
  const names = new Map<string, number>();
  const vms: VmJob[] = raw.vms.map((v, index) => {
    const namePath = ['vms', index, v.name === undefined ? 'domain' : 'name'];
    const name = v.name ?? v.domain ?? '';
    if (v.name === undefined && v.domain === undefined) problem(['vms', index], 'give the VM a name — write e.g. name: web01');
    else if (vmNameProblem(name) !== undefined) {
      problem(namePath, `the VM name ${JSON.stringify(name)} cannot be the first part of a disk id: use letters, digits, ".", "_", "-" — write e.g. name: web01`);
    }
    const twin = names.get(name);
    if (twin !== undefined) problem(namePath, `the name ${name} is used by vms[${twin}] too; each VM needs its own (it names its disks)`);
    else names.set(name, index);
    const kinds = [v.qmp !== undefined ? 'qmp' : undefined, v.domain !== undefined ? 'domain' : undefined, v.images !== undefined ? 'images' : undefined].filter((k) => k !== undefined);
    if (kinds.length > 1) problem(['vms', index, kinds[1]!], `a VM is either a libvirt domain (domain), a running QEMU VM (qmp) or shut down (images), one of them; this one has ${kinds.join(' and ')}`);
    if (kinds.length === 0) {
      problem(['vms', index], 'give domain (a running libvirt domain), qmp (the socket of a running QEMU VM) or images (the disk images of a shut-down VM) — write e.g. domain: web01');
    }
    if (v.connect !== undefined && v.domain === undefined) problem(['vms', index, 'connect'], 'connect is the libvirt URI of a domain; give domain too, or remove it');
    if (v.method !== undefined && v.domain === undefined) problem(['vms', index, 'method'], 'method is how a libvirt domain is backed up; give domain too, or remove it');
    const common = {
      name,
      index,
      compress: v.compress ?? defaults.compress ?? true,
      where: (...path: ConfigPath) => where(['vms', index, ...path]),
      ...(v.blockSize ?? defaults.blockSize) !== undefined ? { blockSize: (v.blockSize ?? defaults.blockSize)! } : {},
      ...((v.retention ?? defaults.retention) !== undefined ? { retention: (v.retention ?? defaults.retention)! } : {}),
      ...((v.fullScan ?? defaults.fullScan) !== undefined ? { fullScan: (v.fullScan ?? defaults.fullScan)! } : {}),
      ...((v.fullScanEvery ?? defaults.fullScanEvery) !== undefined ? { fullScanEveryMs: (v.fullScanEvery ?? defaults.fullScanEvery)! } : {}),
    };
    if (v.images !== undefined) {
      for (const key of ['qga', 'disks', 'quiesce', 'hooks', 'fullScan', 'fullScanEvery'] as const) {
        if (v[key] !== undefined) problem(['vms', index, key], `${key} is for running VMs (with qmp); an offline VM lists its images`);
      }
      const ids = new Map<string, number>();
      const images = v.images.map((img, j): ImageJob => {
        const diskId = `${v.name}/${img.disk ?? defaultDiskIdForImage(img.path)}`;
        const bad = diskIdProblem(diskId);
        if (bad !== undefined) problem(['vms', index, 'images', j, img.disk !== undefined ? 'disk' : 'path'], `the disk id ${JSON.stringify(diskId)} is invalid: ${bad} — write e.g. disk: root`);
        const other = ids.get(diskId);
        if (other !== undefined) problem(['vms', index, 'images', j], `images[${other}] has the same disk id ${diskId}; give one of them another name with disk:`);
        ids.set(diskId, j);
        return { path: resolve(base, img.path), diskId, where: where(['vms', index, 'images', j]), ...(img.format ? { format: img.format } : {}) };
      });
      return { ...common, kind: 'image', images };
    }
    if (v.domain !== undefined) {
      if (v.qga !== undefined) problem(['vms', index, 'qga'], 'qga is for qmp VMs; libvirt reaches the guest agent of a domain itself');
      // Never silently skipped: host hooks do not run around a libvirt snapshot yet.
      if (v.hooks !== undefined) problem(['vms', index, 'hooks'], 'host hooks run around QEMU VMs (qmp) only, not yet around a libvirt domain; remove them here');
      else if (hooksFor(defaults.hooks, undefined).hooks !== undefined) {
        problem(['vms', index, 'domain'], 'defaults.hooks would run around this libvirt domain, which is not supported yet; move the hooks to the qmp VMs that need them');
      }
      return {
        ...common,
        kind: 'libvirt',
        domain: v.domain,
        quiesce: v.quiesce ?? defaults.quiesce ?? 'auto',
        ...(v.connect !== undefined ? { connect: v.connect } : {}),
        ...(v.method !== undefined ? { method: v.method } : {}),
        ...(v.disks !== undefined ? { disks: v.disks } : {}),
      };
    }
    return {
      ...common,
      kind: 'live',
      qmpSocket: resolve(base, v.qmp ?? ''),
      quiesce: v.quiesce ?? defaults.quiesce ?? 'auto',
      ...(v.qga !== undefined ? { qgaSocket: resolve(base, v.qga) } : {}),
      ...(v.disks !== undefined ? { disks: v.disks } : {}),
      ...hooksFor(defaults.hooks, v.hooks),
    };
  });
  return {
    file,
    parallel: raw.parallel ?? DEFAULT_PARALLEL,
    repository: {
      location: remote || s3 ? raw.repository.url : resolve(base, raw.repository.url),
      ...(raw.repository.s3 !== undefined ? { s3Endpoint: raw.repository.s3.endpoint } : {}),
      ...(raw.repository.syncLevel !== undefined ? { syncLevel: raw.repository.syncLevel } : {}),
      ...(raw.repository.tokenFile !== undefined ? { tokenFile: resolve(base, raw.repository.tokenFile) } : {}),
      ...(raw.repository.cacert !== undefined ? { cacert: resolve(base, raw.repository.cacert) } : {}),
      ...(raw.repository.passwordFile !== undefined ? { passwordFile: resolve(base, raw.repository.passwordFile) } : {}),
      ...(defaults.bwlimit !== undefined ? { bwlimit: defaults.bwlimit } : {}),
    },
    vms,
  };
}

type RawHooks = NonNullable<RawJobConfig['vms'][number]['hooks']>;

/** A VM's hooks: its own keys over those of defaults.hooks; none when neither has a command. */
function hooksFor(defaults: RawHooks | undefined, own: RawHooks | undefined): { hooks?: JobHooks } {
  const merged = { ...defaults, ...own };
  const command = (c: string | string[] | undefined): HookCommand | undefined => (c === undefined ? undefined : typeof c === 'string' ? { shell: c } : { argv: c });
  const beforeFreeze = command(merged.beforeFreeze);
  const afterThaw = command(merged.afterThaw);
  if (beforeFreeze === undefined && afterThaw === undefined) return {};
  return {
    hooks: {
      ...(beforeFreeze ? { beforeFreeze } : {}),
      ...(afterThaw ? { afterThaw } : {}),
      timeoutMs: merged.timeout ?? DEFAULT_HOOK_TIMEOUT_MS,
      onFailure: merged.onFailure ?? 'abort',
    },
  };
}

/**
 * The files the whole run depends on must be readable now: a token or CA file that is not
 * stops every VM, so it is a mistake in the configuration. Sockets and images belong to one
 * VM each and are checked when that VM runs (a VM that is shut down must not stop the others).
 */
async function checkFiles(config: JobConfig, raw: RawJobConfig, problem: (path: ConfigPath, message: string) => void): Promise<void> {
  if (!/^https?:\/\//i.test(config.repository.location)) return;
  const tokenFile = config.repository.tokenFile;
  if (tokenFile !== undefined && raw.repository.tokenFile !== undefined) {
    const read = await readTokenFile(tokenFile);
    if ('problem' in read) problem(['repository', 'tokenFile'], read.problem);
  }
  const cacert = config.repository.cacert;
  if (cacert !== undefined && raw.repository.cacert !== undefined) {
    let text: string;
    try {
      text = (await readSmallFile(cacert, MAX_CONFIG_BYTES)).toString('latin1');
    } catch (err) {
      problem(['repository', 'cacert'], `cannot read ${cacert}: ${whyUnreadable(err)}`);
      return;
    }
    if (!text.includes('-----BEGIN CERTIFICATE-----')) problem(['repository', 'cacert'], `${cacert} is not a PEM certificate`);
  }
}

export function whyUnreadable(err: unknown): string {
  const sys = systemErrorCode(err);
  if (sys === 'ENOENT') return 'it does not exist';
  if (sys === 'EACCES' || sys === 'EPERM') return 'permission denied';
  return err instanceof Error ? err.message : String(err);
}
