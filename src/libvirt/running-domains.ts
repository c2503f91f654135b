import { BlockrepError } from '../shared/index.js';
import type { Virsh } from './virsh.js';

/** The names of the running domains of the connection (`virsh list --name --state-running`), sorted. */
export async function runningDomains(virsh: Virsh): Promise<string[]> {
  const out = await virsh.run(['list', '--name', '--state-running'], { timeoutMs: 60_000 });
  const names = out
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  for (const n of names) if (n.length > 1024 || /[\0\n]/.test(n)) throw new BlockrepError('LIBVIRT_ERROR', `virsh list gave a domain name blockrep does not understand: ${JSON.stringify(n.slice(0, 200))}`);
  return names.sort();
}
