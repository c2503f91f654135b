/**
 * chunk — the stored form of one block: the chunk blob (header + zstd or stored bytes, named by
 * the SHA-256 of the plaintext) and slice patches that rebuild a chunk from a similar one.
 * Invariants: decoders check every length before trusting it and fail with a BlockrepError.
 */
export { CHUNK_HEADER_BYTES, CHUNK_MAGIC, CODEC_STORED, CODEC_ZSTD, blobCodec, decodeChunk, encodeChunk, isChunkId, maxStoredChunkBytes, unpackChunk, type EncodedChunk } from './chunk-codec.js';
export { DEFAULT_SLICE_BYTES, SLICE_HASH_BYTES, decodePatch, differingSlices, encodePatch, rebuildFromPatch, sliceHashes } from './chunk-patch.js';
