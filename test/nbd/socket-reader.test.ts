import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SocketClosedError, SocketReader } from '../../src/nbd/socket-reader.js';
import { tempDir } from '../support/temp-dir.js';

/** The byte reader over a real socket pair: exact reads, the buffer bound, and the end of the stream. */

let dir: string;
let n = 0;
const servers: Server[] = [];
beforeAll(async () => {
  dir = await tempDir('blockrep-nbd-reader-');
});
afterAll(async () => {
  for (const s of servers) await new Promise<void>((r) => s.close(() => r()));
});

async function pair(): Promise<{ client: Socket; peer: Socket }> {
  const path = join(dir, `r${n++}.sock`);
  let peer: Socket | undefined;
  const accepted = new Promise<void>((resolve) => {
    const server = createServer((s) => {
      peer = s;
      resolve();
    });
    servers.push(server);
    server.listen(path);
  });
  await new Promise((r) => setTimeout(r, 10));
  const client = connect({ path });
  await new Promise<void>((r) => client.once('connect', () => r()));
  await accepted;
  return { client, peer: peer! };
}

describe('SocketReader', () => {
  it('reads exact byte counts across chunk boundaries, and into a buffer', async () => {
    const { client, peer } = await pair();
    const reader = new SocketReader(client);
    peer.write(Buffer.from([1, 2, 3]));
    setTimeout(() => peer.write(Buffer.from([4, 5, 6, 7, 8, 9])), 20);
    expect([...(await reader.read(2))]).toEqual([1, 2]);
    expect([...(await reader.read(4))]).toEqual([3, 4, 5, 6]);
    const target = Buffer.alloc(5);
    const into = reader.readInto(target, 1, 4);
    await into;
    expect([...target]).toEqual([0, 7, 8, 9, 0]);
    client.destroy();
  });

  it('pauses the socket past its high-water mark, so a fast peer cannot fill memory', async () => {
    const { client, peer } = await pair();
    const reader = new SocketReader(client, 64 * 1024);
    const big = Buffer.alloc(16 * 1024 * 1024, 1);
    peer.write(big);
    await new Promise((r) => setTimeout(r, 200));
    // Paused: what sits in the reader is bounded by the mark plus one socket read.
    expect(reader.bufferedBytes).toBeLessThan(64 * 1024 + 1024 * 1024);
    const all = Buffer.alloc(big.length);
    await reader.readInto(all);
    expect(all.equals(big)).toBe(true);
    client.destroy();
  });

  it('rejects a read the stream cannot meet once the peer closes, after serving what it had', async () => {
    const { client, peer } = await pair();
    const reader = new SocketReader(client);
    peer.end(Buffer.from([1, 2, 3]));
    expect([...(await reader.read(2))]).toEqual([1, 2]);
    await expect(reader.read(2)).rejects.toBeInstanceOf(SocketClosedError);
    expect([...(await reader.read(1))]).toEqual([3]);
    await expect(reader.read(1)).rejects.toBeInstanceOf(SocketClosedError);
  });
});
