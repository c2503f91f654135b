import { createHash, randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockrepError, wrapSystemError } from '../shared/blockrep-error.js';
import { blockCountFor, encodeHeader, ENTRY_BYTES, type ManifestMeta } from './manifest-format.js';

const FLUSH_BYTES = 1024 * 1024;
const READ_BYTES = 4 * 1024 * 1024;

export interface ManifestStats {
  changedBlocks: number;
  zeroBlocks: number;
  storedBytes: number;
}

/**
 * Builds a manifest whose entries arrive in block order during a scan. Entries are spooled to a
 * temporary file so memory stays bounded whatever the image size; finish() then yields the
 * complete manifest (header, entries, digest) as a stream for the backend to store.
 */
export class ManifestWriter {
  readonly blockCount: number;
  private appended = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private spoolBytes = 0;

  private constructor(
    private readonly spool: FileHandle,
    private readonly spoolPath: string,
    private readonly fixed: { blockSize: number; imageBytes: number; createdMs: number; meta: ManifestMeta },
  ) {
    this.blockCount = blockCountFor(fixed.imageBytes, fixed.blockSize);
  }

  static async create(fixed: { blockSize: number; imageBytes: number; createdMs: number; meta: ManifestMeta }, spoolDir = tmpdir()): Promise<ManifestWriter> {
    const spoolPath = join(spoolDir, `blockrep-manifest-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      const fh = await open(spoolPath, 'wx+', 0o600);
      return new ManifestWriter(fh, spoolPath, fixed);
    } catch (err) {
      throw wrapSystemError(err, `creating a temporary file in ${spoolDir} (set TMPDIR to a writable folder)`);
    }
  }

  /** Appends the entries of the next `hashes.length` blocks; `ids` holds 32 bytes per block. */
  async append(hashes: BigUint64Array, ids: Uint8Array): Promise<void> {
    const count = hashes.length;
    if (ids.byteLength !== count * 32 || this.appended + count > this.blockCount) {
      throw new BlockrepError('INTERNAL', 'manifest entries do not match the image');
    }
    const buf = Buffer.allocUnsafe(count * ENTRY_BYTES);
    for (let i = 0; i < count; i++) {
      buf.writeBigUInt64BE(hashes[i]!, i * ENTRY_BYTES);
      buf.set(ids.subarray(i * 32, i * 32 + 32), i * ENTRY_BYTES + 8);
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

  /** The complete manifest as a byte stream. Every block must have been appended. */
  async finish(stats: ManifestStats): Promise<AsyncIterable<Uint8Array>> {
    if (this.appended !== this.blockCount) {
      throw new BlockrepError('INTERNAL', `manifest has ${this.appended} of ${this.blockCount} entries`);
    }
    await this.flushPending();
    const header = encodeHeader({ ...this.fixed, blockCount: this.blockCount, ...stats });
    const spool = this.spool;
    const total = this.spoolBytes;
    return (async function* stream() {
      const digest = createHash('sha256');
      digest.update(header);
      yield header;
      for (let pos = 0; pos < total; ) {
        const buf = Buffer.allocUnsafe(Math.min(READ_BYTES, total - pos));
        const { bytesRead } = await spool.read(buf, 0, buf.length, pos);
        if (bytesRead !== buf.length) throw new BlockrepError('IO', 'temporary manifest shrank while being read');
        digest.update(buf);
        pos += bytesRead;
        yield buf;
      }
      yield digest.digest();
    })();
  }

  /** Removes the spool file; call on every path. */
  async dispose(): Promise<void> {
    await this.spool.close().catch(() => undefined);
    await unlink(this.spoolPath).catch(() => undefined);
  }
}
