import type { NbdAddress } from './nbd-address.js';
import { NbdClient } from './nbd-client.js';

/**
 * The dirty extents of a QEMU dirty bitmap as an NBD export offers it (`qemu:dirty-bitmap:NAME`,
 * flag bit 0 = dirty): ascending, neighbours merged. Used by changed-block tracking through QMP
 * (blockrep's own export of a frozen base) and through libvirt (a pull-mode backup's export).
 */
export async function readDirtyExtents(address: NbdAddress, exportName: string, bitmap: string): Promise<Array<{ offset: number; length: number }>> {
  const context = `qemu:dirty-bitmap:${bitmap}`;
  const client = await NbdClient.connect({ address, exportName, metaContexts: [context] });
  try {
    const out: Array<{ offset: number; length: number }> = [];
    for await (const e of client.extents(context, 0, client.info.exportBytes)) {
      if ((e.flags & 1) === 0) continue;
      const last = out[out.length - 1];
      if (last && last.offset + last.length === e.offset) last.length += e.length;
      else out.push({ offset: e.offset, length: e.length });
    }
    return out;
  } finally {
    await client.close();
  }
}
