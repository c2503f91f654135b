import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  NBD_INIT_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  decodeBlockStatus,
  decodeChunkHeader,
  decodeClientFlags,
  decodeErrorChunk,
  decodeExportNameReply,
  decodeGoData,
  decodeInfoReply,
  decodeMetaContextData,
  decodeMetaContextReply,
  decodeOffsetDataPrefix,
  decodeOffsetHole,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequest,
  decodeServerGreeting,
  decodeServerReply,
  decodeSimpleReply,
  encodeBlockStatusPayload,
  encodeChunkHeader,
  encodeErrorPayload,
  encodeGoData,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContextData,
  encodeMetaContextReply,
  encodeOffsetHolePayload,
  encodeOptionReply,
  encodeRequest,
  encodeServerGreeting,
  encodeSimpleReply,
  nbdReplyType,
  replyHeaderBytes,
} from '../../src/nbd/index.js';
import { checkProperty, mutated, replayCorpus, underContract, withMagic, type DecoderContract } from './fuzz-kit.js';

/**
 * The NBD wire decoders (src/nbd/nbd-handshake-wire.ts, nbd-transmission-wire.ts) read what an
 * NBD server (or, for a server in src/nbd, a client) sends: whatever the bytes, each returns or
 * throws NBD_PROTOCOL, allocates no Buffer over 64 KiB, and what an encoder wrote decodes to
 * what it was given. Every decoder of a module is given every input of that module's corpus.
 */
const contract: DecoderContract = { codes: ['NBD_PROTOCOL'], maxAllocBytes: 64 * 1024, maxMs: 1000 };

const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
};
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};

const handshakeDecoders: Array<(b: Buffer) => unknown> = [
  decodeServerGreeting,
  decodeClientFlags,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeGoData,
  decodeMetaContextData,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeServerReply,
  decodeExportNameReply,
];

const transmissionDecoders: Array<(b: Buffer) => unknown> = [
  decodeRequest,
  replyHeaderBytes,
  decodeSimpleReply,
  decodeChunkHeader,
  (b) => decodeOffsetDataPrefix(b, b.byteLength),
  (b) => decodeOffsetDataPrefix(b.subarray(0, 8), b.byteLength >= 4 ? b.readUInt32BE(b.byteLength - 4) : 0),
  decodeOffsetHole,
  decodeBlockStatus,
  (b) => decodeErrorChunk(nbdReplyType.error, b),
  (b) => decodeErrorChunk(nbdReplyType.errorOffset, b),
  (b) => decodeErrorChunk(0x8123, b),
];

async function allUnderContract(decoders: Array<(b: Buffer) => unknown>, bytes: Buffer): Promise<void> {
  for (const decode of decoders) await underContract(contract, () => decode(bytes));
}

/** Valid handshake messages, both directions. */
const validHandshake: fc.Arbitrary<Buffer> = fc.oneof(
  fc.nat({ max: 0xffff }).map((flags) => encodeServerGreeting(flags)),
  fc.tuple(fc.nat({ max: 0x7fffffff }), fc.nat({ max: 0xffffffff }), fc.uint8Array({ maxLength: 40 })).map(([o, t, d]) => encodeOptionReply(o, t, d)),
  fc.tuple(fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0')), fc.array(fc.nat({ max: 0xffff }), { maxLength: 4 })).map(([name, infos]) => encodeGoData(name, infos)),
  fc.tuple(fc.string({ maxLength: 20 }).filter((s) => !s.includes('\0')), fc.array(fc.string({ maxLength: 30 }).filter((s) => !s.includes('\0')), { maxLength: 4 })).map(([name, qs]) => encodeMetaContextData(name, qs)),
  fc.tuple(fc.nat({ max: 0xffffffff }), fc.string({ minLength: 1, maxLength: 40 }).filter((s) => !s.includes('\0'))).map(([id, name]) => encodeMetaContextReply(id, name)),
  fc.tuple(fc.nat({ max: Number.MAX_SAFE_INTEGER }), fc.nat({ max: 0xffff })).map(([size, flags]) => encodeInfoExport(size, flags)),
  fc.tuple(fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff })).map(([a, b, c]) => encodeInfoBlockSize(a, b, c)),
);

/** Valid transmission messages and payloads, both directions. */
const validTransmission: fc.Arbitrary<Buffer> = fc.oneof(
  fc.record({ flags: fc.nat({ max: 0xffff }), type: fc.nat({ max: 0xffff }), cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), offset: fc.nat({ max: Number.MAX_SAFE_INTEGER }), length: fc.nat({ max: 0xffffffff }) }).map(encodeRequest),
  fc.tuple(fc.nat({ max: 0xffffffff }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })).map(([e, c]) => encodeSimpleReply(e, c)),
  fc.record({ flags: fc.nat({ max: 0xffff }), type: fc.nat({ max: 0xffff }), cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), length: fc.nat({ max: 0xffffffff }) }).map(encodeChunkHeader),
  fc.tuple(fc.nat({ max: Number.MAX_SAFE_INTEGER }), fc.integer({ min: 1, max: 0xffffffff })).map(([o, n]) => encodeOffsetHolePayload(o, n)),
  fc.tuple(fc.nat({ max: 0xffffffff }), fc.array(fc.record({ length: fc.integer({ min: 1, max: 0xffffffff }), flags: fc.nat({ max: 0xffffffff }) }), { minLength: 1, maxLength: 20 })).map(([id, es]) => encodeBlockStatusPayload(id, es)),
  fc.tuple(fc.integer({ min: 1, max: 0xffffffff }), fc.string({ maxLength: 60 }), fc.option(fc.nat({ max: Number.MAX_SAFE_INTEGER }), { nil: undefined })).map(([e, m, o]) => encodeErrorPayload(e, m, o)),
);

describe('NBD handshake wire decoders', () => {
  it('the corpus stays within the contract', async () => {
    await replayCorpus('nbd-handshake-wire', (bytes) => allUnderContract(handshakeDecoders, bytes));
  });

  it('mutated and random messages: a value or NBD_PROTOCOL, within the bounds', async () => {
    const magics = [u64(NBD_INIT_MAGIC), Buffer.concat([u64(NBD_INIT_MAGIC), u64(NBD_OPTS_MAGIC)]), u64(NBD_OPTS_MAGIC), u64(NBD_OPTION_REPLY_MAGIC), Buffer.from([0, 0])];
    const input = fc.oneof(mutated(validHandshake, [0, 2, 4, 8, 10, 12, 16]), withMagic(Buffer.alloc(0), 80), ...magics.map((m) => withMagic(m, 80)));
    await checkProperty('nbd-handshake-wire', input, (bytes) => allUnderContract(handshakeDecoders, bytes), 1500);
  });

  it('round trips', async () => {
    await checkProperty(
      'nbd-handshake-wire',
      fc.tuple(fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0')), fc.array(fc.string({ minLength: 1, maxLength: 30 }).filter((s) => !s.includes('\0')), { maxLength: 5 }), fc.nat({ max: Number.MAX_SAFE_INTEGER }), fc.nat({ max: 0xffff })),
      ([name, queries, size, flags]) => {
        expect(decodeMetaContextData(encodeMetaContextData(name, queries))).toEqual({ exportName: name, queries });
        expect(decodeGoData(encodeGoData(name, [3]))).toEqual({ exportName: name, infoRequests: [3] });
        expect(decodeInfoReply(encodeInfoExport(size, flags))).toEqual({ type: 'export', exportBytes: size, transmissionFlags: flags });
        if (queries[0] !== undefined) expect(decodeMetaContextReply(encodeMetaContextReply(7, queries[0]))).toEqual({ contextId: 7, name: queries[0] });
      },
      300,
    );
  });
});

describe('NBD transmission wire decoders', () => {
  it('the corpus stays within the contract', async () => {
    await replayCorpus('nbd-transmission-wire', (bytes) => allUnderContract(transmissionDecoders, bytes));
  });

  it('mutated and random messages: a value or NBD_PROTOCOL, within the bounds', async () => {
    const magics = [u32(NBD_REQUEST_MAGIC), u32(NBD_SIMPLE_REPLY_MAGIC), u32(NBD_STRUCTURED_REPLY_MAGIC)];
    const input = fc.oneof(mutated(validTransmission, [0, 4, 6, 8, 12, 16, 24]), withMagic(Buffer.alloc(0), 200), ...magics.map((m) => withMagic(m, 80)));
    await checkProperty('nbd-transmission-wire', input, (bytes) => allUnderContract(transmissionDecoders, bytes), 1500);
  });

  it('round trips', async () => {
    await checkProperty(
      'nbd-transmission-wire',
      fc.record({ flags: fc.nat({ max: 0xffff }), type: fc.nat({ max: 0xffff }), cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), offset: fc.nat({ max: Number.MAX_SAFE_INTEGER }), length: fc.nat({ max: 0xffffffff }) }),
      (request) => {
        expect(decodeRequest(encodeRequest(request))).toEqual(request);
        const header = { flags: request.flags, type: request.type, cookie: request.cookie, length: request.length };
        expect(decodeChunkHeader(encodeChunkHeader(header))).toEqual(header);
        expect(decodeOffsetHole(encodeOffsetHolePayload(request.offset, request.length || 1))).toEqual({ offset: request.offset, holeBytes: request.length || 1 });
      },
      300,
    );
  });
});
