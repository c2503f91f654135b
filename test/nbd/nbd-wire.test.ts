import { describe, expect, it } from 'vitest';
import {
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
  decodeSimpleReply,
  encodeBlockStatusPayload,
  encodeChunkHeader,
  encodeErrorPayload,
  encodeExportNameReply,
  encodeGoData,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContextData,
  encodeMetaContextReply,
  encodeOffsetHolePayload,
  encodeOption,
  encodeOptionReply,
  encodeRequest,
  encodeServerGreeting,
  encodeSimpleReply,
  nbdReplyType,
  replyHeaderBytes,
} from '../../src/nbd/index.js';
import { BlockrepError } from '../../src/shared/blockrep-error.js';

/**
 * The wire codecs: the bytes of known messages, what an encoder writes its decoder reads back
 * (the layouts a server in this folder would share), and what a decoder refuses. Arbitrary and
 * mutated bytes: test/fuzz/nbd-wire.fuzz.test.ts.
 */

describe('NBD wire codecs', () => {
  it('writes the greeting, request and reply headers with the spec layout', () => {
    expect(encodeServerGreeting(3).toString('hex')).toBe(`${Buffer.from('NBDMAGIC').toString('hex')}${Buffer.from('IHAVEOPT').toString('hex')}0003`);
    expect(encodeRequest({ flags: 0x8, type: 7, cookie: 0x0102030405060708n, offset: 2 ** 40, length: 0xfffff000 }).toString('hex')).toBe('25609513' + '0008' + '0007' + '0102030405060708' + '0000010000000000' + 'fffff000');
    expect(encodeOptionReply(7, 3, Buffer.from([9])).toString('hex')).toBe('0003e889045565a9' + '00000007' + '00000003' + '00000001' + '09');
    expect(encodeChunkHeader({ flags: 1, type: 2, cookie: 5n, length: 12 }).toString('hex')).toBe('668e33ef' + '0001' + '0002' + '0000000000000005' + '0000000c');
  });

  it('round-trips every message both ways', () => {
    expect(decodeServerGreeting(encodeServerGreeting(3))).toEqual({ handshakeFlags: 3 });
    expect(decodeClientFlags(Buffer.from([0, 0, 0, 3]))).toBe(3);
    expect(decodeOptionHeader(encodeOption(10, Buffer.alloc(5)))).toEqual({ option: 10, length: 5 });
    expect(decodeOptionReplyHeader(encodeOptionReply(9, 0x80000001))).toEqual({ option: 9, type: 0x80000001, length: 0 });
    expect(decodeGoData(encodeGoData('disk0', [3, 1]))).toEqual({ exportName: 'disk0', infoRequests: [3, 1] });
    expect(decodeMetaContextData(encodeMetaContextData('', ['base:allocation', 'qemu:dirty-bitmap:b0']))).toEqual({ exportName: '', queries: ['base:allocation', 'qemu:dirty-bitmap:b0'] });
    expect(decodeMetaContextReply(encodeMetaContextReply(7, 'qemu:dirty-bitmap:é'))).toEqual({ contextId: 7, name: 'qemu:dirty-bitmap:é' });
    expect(decodeInfoReply(encodeInfoExport(2 ** 50, 0x1234))).toEqual({ type: 'export', exportBytes: 2 ** 50, transmissionFlags: 0x1234 });
    expect(decodeInfoReply(encodeInfoBlockSize(512, 4096, 1 << 25))).toEqual({ type: 'blockSize', minimumBytes: 512, preferredBytes: 4096, maximumPayloadBytes: 1 << 25 });
    expect(decodeExportNameReply(encodeExportNameReply(4096, 1, true))).toEqual({ exportBytes: 4096, transmissionFlags: 1 });
    const request = { flags: 0, type: 0, cookie: 2n ** 64n - 1n, offset: 123, length: 456 };
    expect(decodeRequest(encodeRequest(request))).toEqual(request);
    expect(decodeSimpleReply(encodeSimpleReply(5, 9n))).toEqual({ error: 5, cookie: 9n });
    expect(decodeChunkHeader(encodeChunkHeader({ flags: 1, type: 5, cookie: 3n, length: 20 }))).toEqual({ flags: 1, type: 5, cookie: 3n, length: 20 });
    expect(decodeOffsetHole(encodeOffsetHolePayload(4096, 512))).toEqual({ offset: 4096, holeBytes: 512 });
    const status = decodeBlockStatus(encodeBlockStatusPayload(2, [{ length: 4096, flags: 3 }, { length: 512, flags: 0 }]));
    expect([status.contextId, [...status.lengths], [...status.flags]]).toEqual([2, [4096, 512], [3, 0]]);
    expect(decodeErrorChunk(nbdReplyType.error, encodeErrorPayload(5, 'bad'))).toEqual({ error: 5, message: 'bad' });
    expect(decodeErrorChunk(nbdReplyType.errorOffset, encodeErrorPayload(5, '', 77))).toEqual({ error: 5, message: '', offset: 77 });
    expect(replyHeaderBytes(encodeSimpleReply(0, 1n))).toBe(16);
    expect(replyHeaderBytes(encodeChunkHeader({ flags: 0, type: 0, cookie: 1n, length: 0 }))).toBe(20);
  });

  it('refuses what a peer must not send', () => {
    const refused = (f: () => unknown): string => {
      try {
        f();
      } catch (err) {
        expect(err).toBeInstanceOf(BlockrepError);
        return (err as BlockrepError).code;
      }
      return 'accepted';
    };
    const hugeSize = encodeInfoExport(0, 1);
    hugeSize.writeBigUInt64BE(2n ** 53n, 2);
    expect(refused(() => decodeInfoReply(hugeSize))).toBe('NBD_PROTOCOL');
    expect(refused(() => decodeInfoReply(Buffer.concat([encodeInfoExport(1, 1), Buffer.alloc(1)])))).toBe('NBD_PROTOCOL');
    expect(refused(() => decodeMetaContextReply(Buffer.from([0, 0, 0, 1, 0xff, 0xfe])))).toBe('NBD_PROTOCOL'); // not UTF-8
    expect(refused(() => decodeMetaContextReply(Buffer.from([0, 0, 0, 1, 0x61, 0])))).toBe('NBD_PROTOCOL'); // NUL
    expect(refused(() => decodeOffsetHole(encodeOffsetHolePayload(0, 0)))).toBe('NBD_PROTOCOL');
    expect(refused(() => decodeOffsetDataPrefix(Buffer.alloc(8), 8))).toBe('NBD_PROTOCOL');
    expect(refused(() => decodeBlockStatus(Buffer.alloc(4)))).toBe('NBD_PROTOCOL');
    expect(refused(() => decodeErrorChunk(nbdReplyType.error, encodeErrorPayload(0, 'x')))).toBe('NBD_PROTOCOL');
    expect(refused(() => decodeErrorChunk(nbdReplyType.offsetData, encodeErrorPayload(5, 'x')))).toBe('NBD_PROTOCOL');
    expect(refused(() => replyHeaderBytes(Buffer.from('HTTP')))).toBe('NBD_PROTOCOL');
    expect(refused(() => encodeGoData('a\0b', []))).toBe('USAGE');
    expect(refused(() => encodeMetaContextData('', ['x'.repeat(4097)]))).toBe('USAGE');
    // An unknown error chunk type still has the common fields, and extra trailing fields.
    expect(decodeErrorChunk(0x8077, Buffer.concat([encodeErrorPayload(5, 'x'), Buffer.alloc(3)]))).toEqual({ error: 5, message: 'x' });
  });
});
