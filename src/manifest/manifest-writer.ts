import { createHash, randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockrepError, wrapSystemError } from '../shared/index.js';
import { encodeDelta } from './manifest-delta.js';
import { blockCountFor, encodeHeader, ENTRY_BYTES, type ManifestMeta } from './manifest-format.js';

const FLUSH_BYTES = 1024 * 1024;
const READ_BYTES = 4 * 1024 * 1024;
/** Past this, a delta is no cheaper to send than the manifest itself; keep it in memory below. */
const MAX_DELTA_BYTES = 32 * 1024 * 1024;

export interface ManifestStats {
  changedBlocks: number;
  zeroBlocks: number;
  storedBytes: number;
}

export interface FixedManifestFacts {
  blockSize: number;
  imageBytes: number;
  createdMs: number;
  meta: ManifestMeta;
}

/** A complete manifest, ready to be stored whole or sent as a delta against its parent. */
export interface FinishedManifest {
  bytes: number;
  digest: Buffer;
  /** The whole manifest; may be read more than once. */
  stream(): AsyncIterable<Uint8Array>;
  /** Only the entries that differ from the parent, when there is a parent and it is worth it. */
  delta(): Buffer | undefined;
}

/**
 * Builds a manifest whose entries arrive in block order during a scan. Entries are spooled to a
 * temporary file so memory stays bounded whatever the image size. Entries marked changed are
 * also kept (up to a bound) so the manifest can be sent as a delta against its parent.
 */
export class ManifestWriter {
  readonly blockCount: number;
  private appended = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private spoolBytes = 0;
  private deltaEntries: Array<{ index: number; entry: Buffer }> | undefined;

  private constructor(
    private readonly spool: FileHandle,
    private readonly spoolPath: string,
    private readonly fixed: FixedManifestFacts,
  ) {
    this.blockCount = blockCountFor(fixed.imageBytes, fixed.blockSize);
    this.deltaEntries = fixed.meta.parentVersionId === null ? undefined : [];
  }

  static async create(fixed: FixedManifestFacts, spoolDir = tmpdir()): Promise<ManifestWriter> {
    const spoolPath = join(spoolDir, `blockrep-manifest-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      const fh = await open(spoolPath, 'wx+', 0o600);
      return new ManifestWriter(fh, spoolPath, fixed);
    } catch (err) {
      throw wrapSystemError(err, `creating a temporary file in ${spoolDir} (set TMPDIR to a writable folder)`);
    }
  }

  /**
   * Appends the entries of the next `hashes.length` blocks; `ids` holds 32 bytes per block.
   * `differs[i]` = 1 marks an entry that is not the same as the parent's.
   */
  async append(hashes: BigUint64Array, ids: Uint8Array, differs?: Uint8Array): Promise<void> {
    const count = hashes.length;
    if (ids.byteLength !== count * 32 || this.appended + count > this.blockCount) {
      throw new BlockrepError('INTERNAL', 'manifest entries do not match the image');
    }
    const buf = Buffer.allocUnsafe(count * ENTRY_BYTES);
    for (let i = 0; i < count; i++) {
      buf.writeBigUInt64BE(hashes[i]!, i * ENTRY_BYTES);
      buf.set(ids.subarray(i * 32, i * 32 + 32), i * ENTRY_BYTES + 8);
    }
    if (this.deltaEntries) {
      if (!differs) {
        this.deltaEntries = undefined;
      } else {
        for (let i = 0; i < count; i++) {
          if (differs[i]) this.deltaEntries.push({ index: this.appended + i, entry: Buffer.from(buf.subarray(i * ENTRY_BYTES, (i + 1) * ENTRY_BYTES)) });
        }
        if (this.deltaEntries.length * (ENTRY_BYTES + 8) > MAX_DELTA_BYTES) this.deltaEntries = undefined;
      }
    }
    this.appended += count;
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    if (this.pendingBytes >= FLUSH_BYTES) await this.flushPending();
  }

  private async flushPending(): Promise<void> {
    const data = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    try {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await this.spool.write(data, done, data.length - done, this.spoolBytes + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw wrapSystemError(err, `writing the temporary manifest ${this.spoolPath}`);
    }
    this.spoolBytes += data.length;
  }

  /** Completes the manifest. Every block must have been appended. */
  async finish(stats: ManifestStats): Promise<FinishedManifest> {
    if (this.appended !== this.blockCount) {
      throw new BlockrepError('INTERNAL', `manifest has ${this.appended} of ${this.blockCount} entries`);
    }
    await this.flushPending();
    const header = encodeHeader({ ...this.fixed, blockCount: this.blockCount, ...stats });
    const entries = () => this.readSpool();
    const hash = createHash('sha256').update(header);
    for await (const piece of entries()) hash.update(piece);
    const digest = hash.digest();
    const deltaEntries = this.deltaEntries;
    const bytes = header.length + this.spoolBytes + digest.length;
    return {
      bytes,
      digest,
      stream: async function* () {
        yield header;
        yield* entries();
        yield digest;
      },
      delta: () => (deltaEntries ? encodeDelta(header, digest, deltaEntries) : undefined),
    };
  }

  private async *readSpool(): AsyncIterable<Buffer> {
    for (let pos = 0; pos < this.spoolBytes; ) {
      const buf = Buffer.allocUnsafe(Math.min(READ_BYTES, this.spoolBytes - pos));
      const { bytesRead } = await this.spool.read(buf, 0, buf.length, pos);
      if (bytesRead !== buf.length) throw new BlockrepError('IO', 'temporary manifest shrank while being read');
      pos += bytesRead;
      yield buf;
    }
  }

  /** Removes the spool file; call on every path. */
  async dispose(): Promise<void> {
    await this.spool.close().catch(() => undefined);
    await unlink(this.spoolPath).catch(() => undefined);
  }
}
