import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Where blockrep keeps its state for libvirt domains: the per-domain lock (a libvirt domain has
 * no socket of ours to put it next to) and the work folders of backup jobs, named after the
 * connection URI and the domain. /run/blockrep is shared by every process of the host (a
 * PrivateTmp service would not see another's /tmp); a user who cannot write there gets a folder
 * of their own under the temp dir.
 */
export async function blockrepStateDir(): Promise<string> {
  for (const dir of [process.getuid?.() === 0 ? '/run/blockrep' : undefined, join(tmpdir(), `blockrep-${process.getuid?.() ?? 'user'}`)]) {
    if (dir === undefined) continue;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      return dir;
    } catch {
      // try the next place
    }
  }
  return tmpdir();
}

export async function domainLockPath(connect: string | undefined, domain: string): Promise<string> {
  const uri = connect ?? process.env.LIBVIRT_DEFAULT_URI ?? '';
  const name = `libvirt-${createHash('sha256').update(uri).digest('hex').slice(0, 12)}-${encodeURIComponent(domain)}`;
  return join(await blockrepStateDir(), name);
}
