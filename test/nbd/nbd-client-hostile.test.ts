import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BASE_ALLOCATION,
  NBD_REPLY_FLAG_DONE,
  NbdClient,
  encodeBlockStatusPayload,
  encodeChunk,
  encodeChunkHeader,
  encodeErrorPayload,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeOffsetDataPayload,
  encodeOffsetHolePayload,
  encodeOptionReply,
  encodeServerGreeting,
  encodeSimpleReply,
  nbdErrno,
  nbdOption,
  nbdOptionReply,
  nbdReplyType,
  nbdTransmissionFlag,
  type NbdConnectOptions,
  type NbdRequest,
} from '../../src/nbd/index.js';
import { BlockrepError, isBlockrepError } from '../../src/shared/blockrep-error.js';
import { tempDir } from '../support/temp-dir.js';
import { startFakeServer, type FakeScript, type FakeServer } from './support/fake-nbd-server.js';

/**
 * The client against a scripted server that breaks the protocol on purpose: every malformed or
 * hostile reply ends in a BlockrepError with a stable code, quickly (no hang), and the
 * connection is dropped. Also the corners the spec allows and qemu-nbd does not show: chunks
 * out of order, the final extent past the range, NBD_OPT_GO unknown.
 */

let dir: string;
const servers: FakeServer[] = [];
beforeAll(async () => {
  dir = await tempDir('blockrep-nbd-fake-');
});
afterAll(async () => {
  for (const s of servers) await s.stop();
});

async function fake(script: FakeScript): Promise<FakeServer> {
  const server = await startFakeServer(dir, script);
  servers.push(server);
  return server;
}

function connect(server: FakeServer, options: Omit<NbdConnectOptions, 'address'> = {}): Promise<NbdClient> {
  return NbdClient.connect({ address: { kind: 'unix', path: server.path }, handshakeTimeoutMs: 2_000, requestTimeoutMs: 2_000, ...options });
}

async function failure(promise: Promise<unknown>): Promise<BlockrepError> {
  const started = Date.now();
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isBlockrepError(err)) throw new Error(`expected a BlockrepError, got ${String(err)}`);
  // Refused as it happens, not by the 2 s timeouts (unless a test wants those).
  (err as BlockrepError & { elapsedMs: number }).elapsedMs = Date.now() - started;
  return err;
}

const data = (req: NbdRequest, offset: number, bytes: number, flags = 0, fill = 0xab): Buffer =>
  encodeChunk(flags, nbdReplyType.offsetData, req.cookie, encodeOffsetDataPayload(offset, Buffer.alloc(bytes, fill)));

/** A read whose reply `reply` scripts: expects NBD_PROTOCOL, and that the client is then unusable. */
async function expectReadRefused(reply: (req: NbdRequest, sock: Socket) => void, message: RegExp, read: [number, number] = [4096, 4096]): Promise<void> {
  const server = await fake({ onRequest: (req, sock) => reply(req, sock) });
  const client = await connect(server);
  const err = await failure(client.read(...read));
  expect(err.code).toBe('NBD_PROTOCOL');
  expect(err.message).toMatch(message);
  expect((err as any).elapsedMs).toBeLessThan(1_500);
  const after = await failure(client.read(0, 1));
  expect(after.code).toBe('NBD_PROTOCOL');
  await client.close();
}

describe('handshake: refused with NBD_PROTOCOL', () => {
  const cases: Array<[string, FakeScript, RegExp]> = [
    ['a greeting without NBDMAGIC', { greeting: Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n') }, /NBDMAGIC/],
    ['an oldstyle greeting', { greeting: Buffer.concat([encodeServerGreeting(1).subarray(0, 8), Buffer.from('0000420281861253', 'hex'), Buffer.alloc(2)]) }, /oldstyle/],
    ['no fixed-newstyle flag', { greeting: encodeServerGreeting(0) }, /fixed-newstyle/],
    [
      'an option reply with the wrong magic',
      { onOption: (o, _d, s) => (s.write(Buffer.concat([Buffer.alloc(8, 0x11), encodeOptionReply(o, nbdOptionReply.ack).subarray(8)])), true) },
      /option reply has magic/,
    ],
    ['a reply to another option', { onOption: (o, _d, s) => (s.write(encodeOptionReply(o + 1, nbdOptionReply.ack)), true) }, /answered option/],
    [
      'an option reply of 4 GiB',
      {
        onOption: (o, _d, s) => {
          const r = encodeOptionReply(o, nbdOptionReply.info);
          r.writeUInt32BE(0xffffffff, 16);
          s.write(r);
          return true;
        },
      },
      /over the .*-byte bound/,
    ],
    [
      'an export size beyond 2^53',
      {
        onOption: (o, _d, s) => {
          if (o !== nbdOption.go) return false;
          const info = encodeInfoExport(0, nbdTransmissionFlag.hasFlags);
          info.writeBigUInt64BE(1n << 60n, 2);
          s.write(encodeOptionReply(o, nbdOptionReply.info, info));
          s.write(encodeOptionReply(o, nbdOptionReply.ack));
          return true;
        },
      },
      /export size .* beyond 2\^53/,
    ],
    ['NBD_OPT_GO acknowledged without NBD_INFO_EXPORT', { onOption: (o, _d, s) => o === nbdOption.go && (s.write(encodeOptionReply(o, nbdOptionReply.ack)), true) }, /without NBD_INFO_EXPORT/],
    [
      'a minimum block size that is not a power of two',
      {
        onOption: (o, _d, s) => {
          if (o !== nbdOption.go) return false;
          s.write(encodeOptionReply(o, nbdOptionReply.info, encodeInfoExport(4096, nbdTransmissionFlag.hasFlags)));
          s.write(encodeOptionReply(o, nbdOptionReply.info, encodeInfoBlockSize(3, 4096, 65536)));
          s.write(encodeOptionReply(o, nbdOptionReply.ack));
          return true;
        },
      },
      /minimum block size 3/,
    ],
    ['a close in the middle of the handshake', { onOption: (_o, _d, s) => (s.end(encodeOptionReply(nbdOption.structuredReply, nbdOptionReply.ack).subarray(0, 10)), true) }, /closed the connection during the handshake/],
  ];
  for (const [name, script, message] of cases) {
    it(name, async () => {
      const err = await failure(connect(await fake(script)));
      expect(err.code).toBe('NBD_PROTOCOL');
      expect(err.message).toMatch(message);
      expect((err as any).elapsedMs).toBeLessThan(1_500);
    });
  }

  it('a server that never answers: NBD_ERROR after the handshake timeout, no hang', async () => {
    const err = await failure(connect(await fake({ onOption: () => true }), { handshakeTimeoutMs: 300 }));
    expect(err.code).toBe('NBD_ERROR');
    expect(err.details?.timeout).toBe(true);
  });

  it('structured replies refused: reads use simple replies; block status is refused with NBD_ERROR', async () => {
    const server = await fake({ refuseStructured: true, onRequest: (req, s) => s.write(Buffer.concat([encodeSimpleReply(0, req.cookie), Buffer.alloc(req.length, 0x5a)])) });
    const client = await connect(server);
    expect(client.info.structuredReplies).toBe(false);
    expect((await client.read(10, 20)).equals(Buffer.alloc(20, 0x5a))).toBe(true);
    await client.close();
    const err = await failure(connect(server, { metaContexts: [BASE_ALLOCATION] }));
    expect(err.code).toBe('NBD_ERROR');
  });

  it('falls back to NBD_OPT_EXPORT_NAME when the server does not know NBD_OPT_GO', async () => {
    const server = await fake({
      onOption: (o, _d, s) => {
        if (o === nbdOption.go) s.write(encodeOptionReply(o, nbdOptionReply.errUnsup));
        else if (o === nbdOption.exportName) {
          const reply = Buffer.alloc(10);
          reply.writeBigUInt64BE(8192n, 0);
          reply.writeUInt16BE(nbdTransmissionFlag.hasFlags, 8);
          s.write(reply); // NO_ZEROES was negotiated: no 124 zero bytes
        } else return false;
        return true;
      },
    });
    const client = await connect(server, { exportName: 'x' });
    expect(client.info.exportBytes).toBe(8192);
    expect((await client.read(0, 8192)).equals(Buffer.alloc(8192, 0xab))).toBe(true);
    await client.close();
  });
});

describe('ending the session', () => {
  it('close() waits for the reads in flight, then sends NBD_CMD_DISC; later requests are refused', async () => {
    const held: Array<[NbdRequest, Socket]> = [];
    const server = await fake({ onRequest: (req, s) => held.push([req, s]) });
    const client = await connect(server);
    const reading = client.read(0, 4096);
    await new Promise((r) => setTimeout(r, 50));
    let closed = false;
    const closing = client.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(closed).toBe(false);
    expect(server.disconnects()).toBe(0);
    const [req, sock] = held[0]!;
    sock.write(data(req, 0, 4096, NBD_REPLY_FLAG_DONE));
    expect((await reading).equals(Buffer.alloc(4096, 0xab))).toBe(true);
    await closing;
    expect(server.disconnects()).toBe(1);
    expect((await failure(client.read(0, 1))).code).toBe('NBD_ERROR');
  });

  it('listMetaContexts leaves with NBD_OPT_ABORT', async () => {
    const server = await fake({});
    expect(await NbdClient.listMetaContexts({ address: { kind: 'unix', path: server.path }, queries: ['base:allocation'] })).toEqual(['base:allocation']);
    expect(server.options).toEqual([nbdOption.structuredReply, nbdOption.listMetaContext, nbdOption.abort]);
  });
});

describe('reads: malformed and hostile replies', () => {
  it('a reply with the wrong magic', () => expectReadRefused((req, s) => s.write(Buffer.concat([Buffer.from([0xde, 0xad, 0xbe, 0xef]), data(req, req.offset, req.length).subarray(4)])), /reply has magic 0xdeadbeef/));
  it('a reply for a cookie never sent', () => expectReadRefused((req, s) => s.write(data({ ...req, cookie: req.cookie + 1000n }, req.offset, req.length, NBD_REPLY_FLAG_DONE)), /no request in flight/));
  it('a data chunk outside the requested range', () => expectReadRefused((req, s) => s.write(data(req, req.offset + 1, req.length, NBD_REPLY_FLAG_DONE)), /outside the read/));
  it('a data chunk before the requested range', () => expectReadRefused((req, s) => s.write(data(req, req.offset - 512, 512, NBD_REPLY_FLAG_DONE)), /outside the read/));
  it('overlapping data chunks', () =>
    expectReadRefused((req, s) => {
      s.write(data(req, req.offset, 2048));
      s.write(data(req, req.offset + 2047, 2049, NBD_REPLY_FLAG_DONE));
    }, /overlaps an earlier chunk/));
  it('a hole overlapping data', () =>
    expectReadRefused((req, s) => {
      s.write(data(req, req.offset, 2048));
      s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.offsetHole, req.cookie, encodeOffsetHolePayload(req.offset + 1024, 3072)));
    }, /overlaps an earlier chunk/));
  it('success claimed with a gap in the data', () =>
    expectReadRefused((req, s) => {
      s.write(data(req, req.offset, 2048));
      s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.none, req.cookie, Buffer.alloc(0)));
    }, /only 2048 bytes covered/));
  it('a data chunk longer than the buffer (length 4 GiB - 1, refused before reading it)', () =>
    expectReadRefused((req, s) => s.write(encodeChunkHeader({ flags: NBD_REPLY_FLAG_DONE, type: nbdReplyType.offsetData, cookie: req.cookie, length: 0xffffffff })), /OFFSET_DATA chunk of 4294967295 bytes/));
  it('a simple reply to a read after structured replies were negotiated', () => expectReadRefused((req, s) => s.write(Buffer.concat([encodeSimpleReply(0, req.cookie), Buffer.alloc(req.length)])), /simple reply to a read/));
  it('a block-status chunk in reply to a read', () =>
    expectReadRefused((req, s) => s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.blockStatus, req.cookie, encodeBlockStatusPayload(1, [{ length: 4096, flags: 0 }]))), /chunk type 5/));
  it('a NONE chunk without DONE', () => expectReadRefused((req, s) => s.write(encodeChunk(0, nbdReplyType.none, req.cookie, Buffer.alloc(0))), /NONE chunk without the DONE flag/));
  it('an unknown chunk type', () => expectReadRefused((req, s) => s.write(encodeChunk(NBD_REPLY_FLAG_DONE, 77, req.cookie, Buffer.alloc(4))), /chunk type 77/));
  it('an error chunk whose message runs past the chunk', () =>
    expectReadRefused((req, s) => {
      const payload = encodeErrorPayload(nbdErrno.EIO, 'disk on fire');
      payload.writeUInt16BE(200, 4);
      s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.error, req.cookie, payload));
    }, /runs past the chunk/));
  it('an error offset outside the request', () =>
    expectReadRefused((req, s) => s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.errorOffset, req.cookie, encodeErrorPayload(nbdErrno.EIO, '', req.offset + req.length))), /outside the request/));
  it('a close in the middle of a data chunk (no hang)', () =>
    expectReadRefused((req, s) => s.end(data(req, req.offset, req.length, NBD_REPLY_FLAG_DONE).subarray(0, 100)), /closed the connection in the middle of a reply/));
  it('a close between two chunks of one reply', () =>
    expectReadRefused((req, s) => s.end(data(req, req.offset, 1024)), /closed the connection in the middle of a reply/));

  it('an ERROR chunk fails the read with NBD_ERROR and the server errno; the connection stays usable', async () => {
    const server = await fake({
      onRequest: (req, s) => {
        if (req.offset === 0) s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.error, req.cookie, encodeErrorPayload(nbdErrno.EIO, 'bad sector\x1b[2J')));
        else s.write(data(req, req.offset, req.length, NBD_REPLY_FLAG_DONE));
      },
    });
    const client = await connect(server);
    const err = await failure(client.read(0, 512));
    expect(err.code).toBe('NBD_ERROR');
    expect(err.details?.errno).toBe('EIO');
    expect(err.message).toContain('bad sector');
    expect(err.message).not.toContain('\x1b');
    expect((await client.read(512, 512)).equals(Buffer.alloc(512, 0xab))).toBe(true);
    await client.close();
  });

  it('a server that never answers a read: NBD_ERROR after the request timeout, and the connection is dropped', async () => {
    const client = await connect(await fake({ onRequest: () => undefined }), { requestTimeoutMs: 300 });
    const started = Date.now();
    const err = await failure(client.read(0, 512));
    expect(err.code).toBe('NBD_ERROR');
    expect(err.details?.timeout).toBe(true);
    expect(Date.now() - started).toBeLessThan(1_500);
    await client.close();
  });

  it('accepts chunks in any order and holes, as the spec allows, and answers out of order', async () => {
    const held: Array<[NbdRequest, Socket]> = [];
    const server = await fake({
      onRequest: (req, s) => {
        held.push([req, s]);
        if (held.length < 2) return;
        // Answer the second request first; each reply's chunks backwards.
        for (const [r, sock] of held.reverse()) {
          const half = r.length / 2;
          sock.write(data(r, r.offset + half, half, 0, 0x02));
          sock.write(encodeChunk(0, nbdReplyType.offsetHole, r.cookie, encodeOffsetHolePayload(r.offset, half / 2)));
          sock.write(data(r, r.offset + half / 2, half / 2, NBD_REPLY_FLAG_DONE, 0x01));
        }
        held.length = 0;
      },
    });
    const client = await connect(server, { maxReadRequestBytes: 4096 });
    const got = await client.read(0, 8192);
    const piece = Buffer.concat([Buffer.alloc(1024), Buffer.alloc(1024, 0x01), Buffer.alloc(2048, 0x02)]);
    expect(got.equals(Buffer.concat([piece, piece]))).toBe(true);
    expect(server.requests.map((r) => [r.offset, r.length])).toEqual([
      [0, 4096],
      [4096, 4096],
    ]);
    await client.close();
  });

  it('aligns reads to the minimum block size the server gives', async () => {
    const server = await fake({ export: { exportBytes: 65536, blockSize: { minimum: 4096, preferred: 4096, maximum: 8192 } } });
    const client = await connect(server);
    expect((await client.read(5000, 10000)).equals(Buffer.alloc(10000, 0xab))).toBe(true);
    expect(server.requests.map((r) => [r.offset, r.length])).toEqual([
      [4096, 8192],
      [12288, 4096],
    ]);
    await client.close();
  });
});

describe('block status: malformed and hostile replies', () => {
  async function statusClient(reply: (req: NbdRequest, s: Socket) => void, exportBytes = 1 << 20): Promise<{ client: NbdClient; server: FakeServer }> {
    const server = await fake({ export: { exportBytes }, onRequest: reply });
    return { client: await connect(server, { metaContexts: [BASE_ALLOCATION] }), server };
  }
  const status = (req: NbdRequest, extents: Array<{ length: number; flags: number }>, contextId = 1): Buffer =>
    encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.blockStatus, req.cookie, encodeBlockStatusPayload(contextId, extents));

  async function expectStatusRefused(reply: (req: NbdRequest, s: Socket) => void, message: RegExp): Promise<void> {
    const { client } = await statusClient(reply);
    const extents = [];
    const err = await failure(
      (async () => {
        for await (const e of client.extents(BASE_ALLOCATION, 0, 1 << 20)) extents.push(e);
      })(),
    );
    expect(err.code).toBe('NBD_PROTOCOL');
    expect(err.message).toMatch(message);
    await client.close();
  }

  it('an extent of length 0', () => expectStatusRefused((req, s) => s.write(status(req, [{ length: 4096, flags: 0 }, { length: 0, flags: 0 }])), /length 0/));
  it('extents running past the queried range before the last', () =>
    expectStatusRefused((req, s) => s.write(status(req, [{ length: req.length, flags: 0 }, { length: 4096, flags: 1 }])), /past the queried range/));
  it('extents running past the end of the export', () => expectStatusRefused((req, s) => s.write(status(req, [{ length: req.length + 4096, flags: 0 }])), /past the end of the export/));
  it('a chunk for a context never selected', () => expectStatusRefused((req, s) => s.write(status(req, [{ length: 4096, flags: 0 }], 9)), /context id 9/));
  it('two chunks for one context', () =>
    expectStatusRefused((req, s) => {
      s.write(encodeChunk(0, nbdReplyType.blockStatus, req.cookie, encodeBlockStatusPayload(1, [{ length: 4096, flags: 0 }])));
      s.write(status(req, [{ length: 4096, flags: 0 }]));
    }, /two BLOCK_STATUS chunks/));
  it('a reply without the chunk of its context', () => expectStatusRefused((req, s) => s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.none, req.cookie, Buffer.alloc(0))), /0 of 1 contexts/));
  it('a chunk length not 4 + 8n', () => expectStatusRefused((req, s) => s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.blockStatus, req.cookie, Buffer.alloc(13))), /not 4 \+ a positive multiple of 8/));
  it('a chunk of 2^21 extents (over the bound, refused before reading it)', () =>
    expectStatusRefused((req, s) => s.write(encodeChunkHeader({ flags: NBD_REPLY_FLAG_DONE, type: nbdReplyType.blockStatus, cookie: req.cookie, length: 4 + 8 * (1 << 21) })), /over the .*-byte bound/));
  it('a simple reply claiming success', () => expectStatusRefused((req, s) => s.write(encodeSimpleReply(0, req.cookie)), /needs a BLOCK_STATUS chunk/));

  it('extents that do not advance past an unaligned start', async () => {
    const server = await fake({ export: { exportBytes: 65536, blockSize: { minimum: 512, preferred: 4096, maximum: 65536 } }, onRequest: (req, s) => s.write(status(req, [{ length: 400, flags: 0 }])) });
    const client = await connect(server, { metaContexts: [BASE_ALLOCATION] });
    const err = await failure(
      (async () => {
        for await (const _ of client.extents(BASE_ALLOCATION, 1000, 5000));
      })(),
    );
    expect(err.code).toBe('NBD_PROTOCOL');
    expect(err.message).toMatch(/did not advance/);
    expect(server.requests[0]).toMatchObject({ offset: 512 });
    expect((await failure(client.read(0, 1))).code).toBe('NBD_PROTOCOL');
    await client.close();
  });

  it('loops when the server answers fewer extents than asked, and clips a last extent that runs past the range', async () => {
    const { client, server } = await statusClient((req, s) => s.write(status(req, [{ length: 4096, flags: req.offset % 8192 === 0 ? 0 : 3 }, { length: 8192, flags: 1 }])));
    const extents = [];
    for await (const e of client.extents(BASE_ALLOCATION, 0, 30000)) extents.push(e);
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(30000);
    expect(extents[extents.length - 1]!.offset + extents[extents.length - 1]!.length).toBe(30000);
    expect(server.requests.map((r) => r.offset)).toEqual([0, 12288, 24576]);
    expect(extents.slice(0, 3)).toEqual([
      { offset: 0, length: 4096, flags: 0 },
      { offset: 4096, length: 8192, flags: 1 },
      { offset: 12288, length: 4096, flags: 3 },
    ]);
    await client.close();
  });

  it('an error chunk fails the query with NBD_ERROR', async () => {
    const { client } = await statusClient((req, s) => s.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.error, req.cookie, encodeErrorPayload(nbdErrno.EINVAL, 'no'))));
    const err = await failure(client.blockStatus(BASE_ALLOCATION, 0, 4096));
    expect(err.code).toBe('NBD_ERROR');
    expect(err.details?.errno).toBe('EINVAL');
    await client.close();
  });
});
