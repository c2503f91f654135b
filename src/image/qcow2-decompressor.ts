import zlib from 'node:zlib';
import zstd from 'zstd-napi/binding.js';
import type { Qcow2CompressionType } from './qcow2-header.js';

/**
 * Decompresses one qcow2 compressed cluster. The stored length is rounded up to whole
 * 512-byte sectors, so the input usually carries trailing bytes (the start of the next
 * compressed cluster, or garbage) after the end of the compressed stream. Like QEMU, a
 * cluster is valid when decompression produces exactly one full cluster; what follows is
 * ignored.
 *
 * decompress() is synchronous and may return the same buffer each time: callers copy out of
 * it before their next await.
 */
export interface Qcow2Decompressor {
  decompress(src: Uint8Array): Uint8Array;
}

export function createQcow2Decompressor(type: Qcow2CompressionType, clusterSize: number): Qcow2Decompressor {
  return type === 'zstd' ? new ZstdDecompressor(clusterSize) : new ZlibDecompressor(clusterSize);
}

/** zlib clusters are raw deflate streams (no zlib header). */
class ZlibDecompressor implements Qcow2Decompressor {
  constructor(private readonly clusterSize: number) {}

  decompress(src: Uint8Array): Uint8Array {
    // Z_SYNC_FLUSH: a stream whose output fills the cluster is fine even if its end marker
    // lies beyond the bytes we have (QEMU accepts that too). maxOutputLength bounds what a
    // corrupt stream can make us allocate.
    const out = zlib.inflateRawSync(src, {
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
      maxOutputLength: this.clusterSize,
      chunkSize: Math.max(this.clusterSize, 64),
    });
    if (out.byteLength !== this.clusterSize) {
      throw new Error(`zlib stream produced ${out.byteLength} bytes, not the ${this.clusterSize}-byte cluster`);
    }
    return out;
  }
}

/**
 * zstd clusters are standard zstd frames. Node 20's zlib has no zstd, so this uses the
 * zstd-napi binding's streaming decompression straight into one reused cluster buffer; it
 * stops once the cluster is full, which skips the trailing bytes.
 */
class ZstdDecompressor implements Qcow2Decompressor {
  private readonly dctx = new zstd.DCtx();
  private readonly out: Buffer;

  constructor(private readonly clusterSize: number) {
    this.out = Buffer.allocUnsafe(clusterSize);
  }

  decompress(src: Uint8Array): Uint8Array {
    this.dctx.reset(zstd.ResetDirective.sessionOnly);
    let produced = 0;
    let consumed = 0;
    while (produced < this.clusterSize) {
      if (consumed >= src.byteLength) {
        throw new Error(`zstd data ended after ${produced} of ${this.clusterSize} bytes`);
      }
      const [, wrote, read] = this.dctx.decompressStream(this.out.subarray(produced), src.subarray(consumed));
      if (wrote === 0 && read === 0) throw new Error(`zstd decompression stalled after ${produced} bytes`);
      produced += wrote;
      consumed += read;
    }
    return this.out;
  }
}
