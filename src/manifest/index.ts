/**
 * manifest — one version's list of blocks (xxHash64 + chunk id, or zero), its binary format with
 * its own digest, the streaming writer and reader, and the delta a client sends instead.
 * Invariants: a manifest read from storage is checked whole before any entry is used.
 */
export { composeManifest, decodeDelta, deltaChunkIds, type DecodedDelta } from './manifest-delta.js';
export { FIXED_HEADER_BYTES, blockCountFor, decodeHeader, manifestBytes, peekHeaderBytes, type ManifestHeader, type TrackingFacts } from './manifest-format.js';
export { ManifestReader, ZERO_CHUNK_ID, idHex, isZeroId, type ManifestEntries } from './manifest-reader.js';
export { ManifestWriter, type FinishedManifest } from './manifest-writer.js';
