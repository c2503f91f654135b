import { createHash } from 'node:crypto';
import { chmod, chown, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { xmlAttr } from './domain-checkpoints.js';
import { blockrepStateDir } from './domain-lock.js';
import type { LibvirtDomain } from './libvirt-domain.js';
import { virshError } from './virsh.js';
import { xmlReader } from './libvirt-xml.js';

/**
 * libvirt's pull-mode backup as blockrep drives it: a work folder of blockrep's (the NBD socket
 * QEMU serves the exports on, the scratch files libvirt makes for its copy-before-write) under
 * blockrep's state folder, named after the URI and the domain so that `recover` finds it; the
 * backup XML (per disk full or incremental from a checkpoint); `backup-begin` with the next
 * checkpoint; the job as `domjobinfo` and `backup-dumpxml` show it (checked by zod); its end
 * (`domjobabort`, the normal end of a pull-mode job); and the dirty extents of an export.
 */

/** The work folder of a backup job on this domain: short, since a unix socket path has 107 bytes at most. */
export async function backupWorkDir(connect: string | undefined, domain: string): Promise<string> {
  const uri = connect ?? process.env.LIBVIRT_DEFAULT_URI ?? '';
  return join(await blockrepStateDir(), `backup-${createHash('sha256').update(`${uri}\0${domain}`).digest('hex').slice(0, 16)}`);
}

/** Is `path` inside a blockrep backup work folder (a job's socket or scratch file)? */
export function isBlockrepBackupPath(path: string): boolean {
  return /\/backup-[0-9a-f]{16}\/[^/]+$/.test(path);
}

/**
 * Creates the work folder afresh, owned by the user QEMU runs as (the owner libvirt gave the
 * disk image it runs on), since QEMU itself creates the socket in it. The state folder above it
 * is made searchable (0711), not listable.
 */
export async function prepareBackupWorkDir(dir: string, imageOfTheDomain: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  const parent = join(dir, '..');
  const p = await stat(parent);
  if ((p.mode & 0o111) !== 0o111) await chmod(parent, (p.mode & 0o700) | 0o711);
  await mkdir(dir, { mode: 0o700 });
  const owner = await stat(imageOfTheDomain);
  if (process.getuid?.() === 0) await chown(dir, owner.uid, owner.gid);
}

export async function removeBackupWorkDir(dir: string): Promise<boolean> {
  try {
    await stat(dir);
  } catch {
    return false;
  }
  await rm(dir, { recursive: true, force: true });
  return true;
}

export interface BackupJobDisk {
  target: string;
  /** full: every block; incremental: the writes since `checkpoint`. */
  mode: 'full' | 'incremental';
  checkpoint?: string | undefined;
}

/** The pull-mode backup definition; disks not listed in `disks` but given in `others` get backup='no'. */
export function backupXml(socket: string, workDir: string, disks: BackupJobDisk[], others: string[]): string {
  const lines: string[] = [];
  for (const d of disks) {
    const mode = d.mode === 'incremental' ? ` backupmode='incremental' incremental='${xmlAttr(d.checkpoint ?? '')}'` : ` backupmode='full'`;
    lines.push(`    <disk name='${xmlAttr(d.target)}' backup='yes' type='file'${mode}>`);
    lines.push(`      <driver type='qcow2'/>`);
    lines.push(`      <scratch file='${xmlAttr(join(workDir, `${d.target}.scratch.qcow2`))}'/>`);
    lines.push(`    </disk>`);
  }
  for (const o of others) lines.push(`    <disk name='${xmlAttr(o)}' backup='no'/>`);
  return `<domainbackup mode='pull'>\n  <server transport='unix' socket='${xmlAttr(socket)}'/>\n  <disks>\n${lines.join('\n')}\n  </disks>\n</domainbackup>\n`;
}

async function beginArgs(domain: LibvirtDomain, workDir: string, backup: string, checkpoint: string | undefined): Promise<string[]> {
  const backupFile = join(workDir, 'backup.xml');
  const checkpointFile = join(workDir, 'checkpoint.xml');
  await writeFile(backupFile, backup, { mode: 0o600 });
  if (checkpoint !== undefined) await writeFile(checkpointFile, checkpoint, { mode: 0o600 });
  return ['backup-begin', '--domain', domain.name, '--backupxml', backupFile, ...(checkpoint !== undefined ? ['--checkpointxml', checkpointFile] : [])];
}

/** Starts the job (and, atomically with it, the checkpoint). */
export async function beginBackup(domain: LibvirtDomain, workDir: string, backup: string, checkpoint: string | undefined): Promise<void> {
  await domain.virsh.run(await beginArgs(domain, workDir, backup, checkpoint), { domain: domain.name, timeoutMs: 120_000 });
}

/**
 * For a frozen guest: `backup-begin` and then `domfsthaw` in one virsh process and connection,
 * so that no process start lies between them; the thaw runs whether the begin worked or not.
 * Resolves with what happened (from virsh's output); never leaves it to the caller to guess
 * whether the guest was thawed: `thawed` is undefined only when virsh did not say so.
 */
export async function beginBackupAndThaw(
  domain: LibvirtDomain,
  workDir: string,
  backup: string,
  checkpoint: string | undefined,
): Promise<{ begun: boolean; beginError: BlockrepError | undefined; thawed: number | undefined; stderr: string }> {
  const args = await beginArgs(domain, workDir, backup, checkpoint);
  const r = await domain.virsh.runBatch([args, ['domfsthaw', '--domain', domain.name]], { domain: domain.name, timeoutMs: 180_000 });
  const begun = /^Backup started\s*$/m.test(r.stdout);
  const thawed = /Thawed (\d+) filesystem/.exec(r.stdout);
  return {
    begun,
    beginError: begun ? undefined : virshError(r.stderr, args, domain.name, domain.virsh.connect),
    thawed: thawed ? Number(thawed[1]) : undefined,
    stderr: r.stderr,
  };
}

export interface BackupJobView {
  socket: string | undefined;
  disks: Array<{ target: string; exportName: string; bitmap: string | undefined }>;
}

const backupSchema = z.object({
  domainbackup: z.object({
    '@_mode': z.string().optional(),
    server: z.object({ '@_transport': z.string().optional(), '@_socket': z.string().optional() }).optional(),
    disks: z
      .union([
        z.object({
          disk: z
            .array(
              z.object({
                '@_name': z.string().min(1),
                '@_backup': z.string().optional(),
                '@_exportname': z.string().optional(),
                '@_exportbitmap': z.string().optional(),
              }),
            )
            .default([]),
        }),
        z.literal(''),
      ])
      .optional(),
  }),
});

const readBackupXml = xmlReader(backupSchema, ['domainbackup.disks.disk']);

export function parseBackupXml(xml: string, what = 'the backup job definition'): BackupJobView {
  const b = readBackupXml(xml, what).domainbackup;
  const disks = b.disks === undefined || b.disks === '' ? [] : b.disks.disk;
  return {
    socket: b.server?.['@_socket'],
    disks: disks.filter((d) => d['@_backup'] !== 'no').map((d) => ({ target: d['@_name'], exportName: d['@_exportname'] ?? d['@_name'], bitmap: d['@_exportbitmap'] })),
  };
}

/** The backup job running on the domain, as `backup-dumpxml` shows it; undefined when there is none. */
export async function readBackupJob(domain: LibvirtDomain): Promise<BackupJobView | undefined> {
  try {
    const xml = await domain.virsh.run(['backup-dumpxml', '--domain', domain.name], { domain: domain.name, timeoutMs: 30_000 });
    return parseBackupXml(xml, `the backup job of domain ${domain.name}`);
  } catch (err) {
    if (isBlockrepError(err) && err.code === 'LIBVIRT_ERROR' && /no domain backup job|backup job .*not (found|present)|no (active )?backup/i.test(String(err.details?.libvirt ?? ''))) return undefined;
    throw err;
  }
}

const jobInfoSchema = z.object({ 'Job type': z.string().min(1), Operation: z.string().optional() });

/** `virsh domjobinfo`: the domain's job (None when there is none) and what it does (Backup, …). */
export async function domainJob(domain: LibvirtDomain): Promise<{ type: string; operation: string | undefined }> {
  const out = await domain.virsh.run(['domjobinfo', '--domain', domain.name], { domain: domain.name, timeoutMs: 30_000 });
  const fields: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^([A-Za-z][A-Za-z ]*?):\s+(.*)$/.exec(line.trim());
    if (m) fields[m[1]!] = m[2]!.trim();
  }
  const parsed = jobInfoSchema.safeParse(fields);
  if (!parsed.success) throw new BlockrepError('LIBVIRT_ERROR', `virsh domjobinfo on domain ${domain.name} gave an answer blockrep does not understand: ${JSON.stringify(out.trim().slice(0, 200))}`);
  return { type: parsed.data['Job type'], operation: parsed.data.Operation };
}

/** Ends the domain's job (`domjobabort`) and waits until libvirt shows none. */
export async function endBackupJob(domain: LibvirtDomain, timeoutMs = 60_000): Promise<void> {
  try {
    await domain.virsh.run(['domjobabort', '--domain', domain.name], { domain: domain.name, timeoutMs: 60_000 });
  } catch (err) {
    // "no job is active on the domain": it ended already.
    if (!(isBlockrepError(err) && /no job is active|no active job/i.test(String(err.details?.libvirt ?? '')))) throw err;
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await domainJob(domain);
    if (job.type === 'None') return;
    if (Date.now() > deadline) throw new BlockrepError('LIBVIRT_ERROR', `the backup job of domain ${domain.name} did not end within ${Math.round(timeoutMs / 1000)} s of domjobabort (still ${job.type}); run: ${domain.command(['domjobabort', domain.name])}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

