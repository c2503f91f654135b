import { BASE_ALLOCATION, NbdClient, type NbdAddress } from '../nbd/index.js';
import type { Extent, ImageFormat, ImageReader } from './image-reader.js';
import { checkExtentsRange, checkReadRange, pushExtent } from './reader-ranges.js';

/** base:allocation flags (NBD proto.md): bit 0 a hole, bit 1 reads as zeros. */
const STATE_ZERO = 2;

/**
 * The guest-visible bytes of a disk served over NBD: QEMU's own export of a frozen base, or
 * libvirt's pull-mode backup export. Opened once per scan worker (each its own connection).
 * Zero extents come from `base:allocation` when the server offers it; without it every byte is
 * data (read, then found zero by the scan).
 */
export class NbdImageReader implements ImageReader {
  readonly format: ImageFormat = 'raw';

  private constructor(
    readonly path: string,
    private readonly client: NbdClient,
    private readonly allocation: boolean,
  ) {}

  get virtualSize(): number {
    return this.client.info.exportBytes;
  }

  static async open(source: { address: NbdAddress; exportName: string }, describe: string): Promise<NbdImageReader> {
    let client: NbdClient;
    let allocation = true;
    try {
      client = await NbdClient.connect({ address: source.address, exportName: source.exportName, metaContexts: [BASE_ALLOCATION] });
    } catch (err) {
      // A server without base:allocation still serves data.
      const offered = await NbdClient.listMetaContexts({ address: source.address, exportName: source.exportName, queries: [BASE_ALLOCATION] }).catch(() => [BASE_ALLOCATION]);
      if (offered.includes(BASE_ALLOCATION)) throw err;
      allocation = false;
      client = await NbdClient.connect({ address: source.address, exportName: source.exportName });
    }
    return new NbdImageReader(describe, client, allocation);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkReadRange(this, buf, offset);
    if (buf.byteLength === 0) return;
    const data = await this.client.read(offset, buf.byteLength);
    buf.set(data);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkExtentsRange(this, offset, length);
    const out: Extent[] = [];
    if (length === 0) return out;
    if (!this.allocation) {
      pushExtent(out, offset, length, 'data');
      return out;
    }
    for await (const e of this.client.extents(BASE_ALLOCATION, offset, length)) {
      pushExtent(out, e.offset, e.length, e.flags & STATE_ZERO ? 'zero' : 'data');
    }
    return out;
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
