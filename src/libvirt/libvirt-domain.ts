import { BlockrepError } from '../shared/index.js';
import { parseDomainXml, type DomainDefinition } from './domain-xml.js';
import type { Virsh } from './virsh.js';

/**
 * One libvirt domain as blockrep sees it, through libvirt's own verbs only (never
 * qemu-monitor-command or qemu-agent-command, which taint the domain): its state, its live and
 * persistent definitions, block jobs on its disks, thaw.
 */

export interface BlockJobInfo {
  /** libvirt's job type text, e.g. "Active Block Commit". */
  type: string;
  cur: number | undefined;
  end: number | undefined;
}

export class LibvirtDomain {
  constructor(
    readonly virsh: Virsh,
    readonly name: string,
  ) {}

  /** `virsh domstate`: running, paused, shut off, crashed, … */
  async state(): Promise<string> {
    const out = await this.virsh.run(['domstate', '--', this.name], { domain: this.name, timeoutMs: 30_000 });
    return out.trim().split('\n')[0]?.trim() ?? '';
  }

  /** The live definition (with backing chains and mirrors), or with inactive the persistent one. */
  async definition(inactive = false): Promise<DomainDefinition> {
    const xml = await this.virsh.run(['dumpxml', ...(inactive ? ['--inactive'] : []), '--', this.name], { domain: this.name, timeoutMs: 30_000 });
    return parseDomainXml(xml, `the ${inactive ? 'persistent' : 'live'} definition of domain ${this.name}`);
  }

  /** The block job running on a disk, from `virsh blockjob --info --raw` (empty when none). */
  async blockJob(target: string): Promise<BlockJobInfo | undefined> {
    const out = await this.virsh.run(['blockjob', '--info', '--raw', '--', this.name, target], { domain: this.name, timeoutMs: 30_000 });
    const fields = new Map<string, string>();
    for (const line of out.split('\n')) {
      const m = /^\s*([a-z_]+)=(.*)$/.exec(line);
      if (m) fields.set(m[1]!, m[2]!.trim());
    }
    const type = fields.get('type');
    if (type === undefined) return undefined;
    const num = (s: string | undefined): number | undefined => (s !== undefined && /^\d+$/.test(s) ? Number(s) : undefined);
    return { type, cur: num(fields.get('cur')), end: num(fields.get('end')) };
  }

  /** Thaws the guest's filesystems (`virsh domfsthaw`); returns how many were frozen. */
  async thaw(): Promise<number> {
    const out = await this.virsh.run(['domfsthaw', '--', this.name], { domain: this.name, timeoutMs: 30_000 });
    const m = /Thawed (\d+) filesystem/.exec(out);
    if (!m) throw new BlockrepError('LIBVIRT_ERROR', `virsh domfsthaw on domain ${this.name} gave an answer blockrep does not understand: ${JSON.stringify(out.trim().slice(0, 200))}`);
    return Number(m[1]);
  }

  /** Freezes the guest's filesystems through its agent (`virsh domfsfreeze`); returns how many. */
  async freeze(): Promise<number> {
    const out = await this.virsh.run(['domfsfreeze', '--', this.name], { domain: this.name, timeoutMs: 60_000 });
    const m = /Froze (\d+) filesystem/.exec(out);
    if (!m) throw new BlockrepError('LIBVIRT_ERROR', `virsh domfsfreeze on domain ${this.name} gave an answer blockrep does not understand: ${JSON.stringify(out.trim().slice(0, 200))}`);
    return Number(m[1]);
  }

  /** The domain's uuid (`virsh domuuid`): a redefined or migrated domain has another. */
  async uuid(): Promise<string> {
    const out = (await this.virsh.run(['domuuid', '--', this.name], { domain: this.name, timeoutMs: 30_000 })).trim();
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(out)) throw new BlockrepError('LIBVIRT_ERROR', `virsh domuuid on domain ${this.name} gave no uuid: ${JSON.stringify(out.slice(0, 200))}`);
    return out.toLowerCase();
  }

  /** `virsh …` as the user would type it, for messages. */
  command(args: string[]): string {
    const q = (s: string): string => (/^[A-Za-z0-9_./:@%+=,-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);
    return ['virsh', ...this.virsh.connectArgs, ...args].map(q).join(' ');
  }
}
