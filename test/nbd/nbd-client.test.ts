import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient, type NbdConnectOptions } from '../../src/nbd/index.js';
import { BASE_ALLOCATION, nbdStateAllocation } from '../../src/nbd/nbd-constants.js';
import { isBlockrepError } from '../../src/shared/blockrep-error.js';
import { convertToRaw, createImage, qemuImg, qemuIo } from '../support/qemu-tools.js';
import { tempDir } from '../support/temp-dir.js';
import { coalesce, nbdinfoMap, startCountingProxy, startQemuNbd, type QemuNbd } from './support/qemu-nbd.js';

/**
 * The NBD client against real qemu-nbd (QEMU 7.2): what it reads equals `qemu-img convert -O
 * raw`, its maps equal libnbd's `nbdinfo --map`, for qcow2 with data, zero clusters and
 * unallocated ranges over a backing chain, for raw, and for a dirty bitmap recorded by
 * qemu-io writes.
 */

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
const servers: QemuNbd[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop();
});

let chain: { top: string; raw: Buffer; server: QemuNbd };
let plainRaw: { image: string; raw: Buffer; server: QemuNbd };

beforeAll(async () => {
  dir = await tempDir('blockrep-nbd-');
  // A backing chain: base has data over the first 40 MiB; the overlay writes data, zeroes some of
  // the base (zero clusters over backing data), and leaves the rest to the base or unallocated.
  const base = join(dir, 'base.qcow2');
  const top = join(dir, 'top.qcow2');
  await createImage(base, { format: 'qcow2', size: 72 * MiB });
  await qemuIo(base, ['write -P 0x11 0 40M', 'write -P 0x33 60M 1M']);
  await createImage(top, { format: 'qcow2', size: 72 * MiB, backing: base, backingFormat: 'qcow2' });
  await qemuImg('bitmap', '--add', '--enable', '-g', '64K', top, 'b0');
  await qemuIo(top, ['write -P 0x22 1M 3M', 'write -z 8M 2M', 'write -P 0x44 10M 4K', 'write -P 0x55 45M 130K', 'write -z 61M 64K', 'write -P 0x66 71M 1M']);
  const rawOut = join(dir, 'top.raw');
  await convertToRaw(top, rawOut, 'qcow2');
  chain = { top, raw: await readFile(rawOut), server: await startQemuNbd({ image: top, format: 'qcow2', socketPath: join(dir, 'top.sock'), bitmaps: ['b0'], allocationDepth: true }) };
  servers.push(chain.server);

  // A sparse raw file with data in a few places, odd size (not a multiple of 64 KiB).
  const image = join(dir, 'plain.raw');
  await createImage(image, { format: 'raw', size: 5 * MiB + 512 });
  await qemuIo(image, ['write -P 0x77 0 4K', 'write -P 0x78 2M 1M', 'write -P 0x79 5M 512'], { format: 'raw' });
  plainRaw = { image, raw: await readFile(image), server: await startQemuNbd({ image, format: 'raw', socketPath: join(dir, 'plain.sock') }) };
  servers.push(plainRaw.server);
});

function connect(server: QemuNbd, options: Omit<NbdConnectOptions, 'address'> = {}): Promise<NbdClient> {
  return NbdClient.connect({ address: { kind: 'unix', path: server.socketPath! }, ...options });
}

async function collect(client: NbdClient, context: string, offset: number, length: number) {
  const out = [];
  for await (const extent of client.extents(context, offset, length)) out.push(extent);
  return out;
}

describe('NbdClient against qemu-nbd', () => {
  it('negotiates the export: size, flags, block sizes, structured replies, contexts', async () => {
    const client = await connect(chain.server, { metaContexts: [BASE_ALLOCATION, 'qemu:dirty-bitmap:b0'] });
    try {
      expect(client.info.exportBytes).toBe(72 * MiB);
      expect(client.info.readOnly).toBe(true);
      expect(client.info.structuredReplies).toBe(true);
      expect(client.info.minimumBlockBytes).toBe(1);
      expect(client.info.maximumPayloadBytes).toBe(32 * MiB);
      expect(client.metaContexts.sort()).toEqual([BASE_ALLOCATION, 'qemu:dirty-bitmap:b0']);
      expect(client.info.transmissionFlags & 1).toBe(1);
    } finally {
      await client.close();
    }
  });

  it('reads the whole chain exactly as qemu-img convert -O raw does (72 MiB: larger than the 32 MiB maximum payload)', async () => {
    const client = await connect(chain.server);
    try {
      const all = await client.read(0, chain.raw.byteLength);
      expect(all.equals(chain.raw)).toBe(true);
      // Unaligned pieces across data, zero clusters and backing data.
      for (const [offset, length] of [
        [1, 1],
        [MiB - 3, 7],
        [8 * MiB - 100, 2 * MiB + 200],
        [10 * MiB + 4095, 2],
        [45 * MiB + 129 * KiB, 5 * KiB],
        [72 * MiB - 1, 1],
      ] as const) {
        const piece = await client.read(offset, length);
        expect(piece.equals(chain.raw.subarray(offset, offset + length)), `read(${offset}, ${length})`).toBe(true);
      }
    } finally {
      await client.close();
    }
  });

  it('reads with simple replies when structured replies are not asked for', async () => {
    const client = await connect(chain.server, { structuredReplies: false, maxReadRequestBytes: 4 * MiB });
    try {
      expect(client.info.structuredReplies).toBe(false);
      const part = await client.read(7 * MiB, 9 * MiB);
      expect(part.equals(chain.raw.subarray(7 * MiB, 16 * MiB))).toBe(true);
    } finally {
      await client.close();
    }
  });

  it('maps base:allocation as nbdinfo --map does, for a backing chain and a sparse raw file', async () => {
    for (const { server, size } of [
      { server: chain.server, size: 72 * MiB },
      { server: plainRaw.server, size: 5 * MiB + 512 },
    ]) {
      const client = await connect(server, { metaContexts: [BASE_ALLOCATION] });
      try {
        const ours = coalesce(await collect(client, BASE_ALLOCATION, 0, size));
        expect(ours).toEqual(coalesce(await nbdinfoMap(server.uri)));
        expect(ours.reduce((n, e) => n + e.length, 0)).toBe(size);
      } finally {
        await client.close();
      }
    }
  });

  it('maps a dirty bitmap as nbdinfo --map=qemu:dirty-bitmap:b0 does: the clusters qemu-io wrote', async () => {
    const context = 'qemu:dirty-bitmap:b0';
    const client = await connect(chain.server, { metaContexts: [BASE_ALLOCATION, context] });
    try {
      const ours = coalesce(await collect(client, context, 0, 72 * MiB));
      expect(ours).toEqual(coalesce(await nbdinfoMap(chain.server.uri, context)));
      const dirty = ours.filter((e) => e.type === 1).map((e) => [e.offset / KiB, e.length / KiB]);
      // 64 KiB granularity: 45M+130K rounds out to 45M..45M+192K.
      expect(dirty).toEqual([
        [1024, 3072],
        [8192, 2112], // 8M..10M zeroed and 10M..10M+4K written: neighbouring dirty clusters
        [46080, 192],
        [62464, 64],
        [72704, 1024],
      ]);
    } finally {
      await client.close();
    }
  });

  it('maps qemu:allocation-depth as nbdinfo does: it tells zero clusters of the overlay from the unallocated', async () => {
    const context = 'qemu:allocation-depth';
    const client = await connect(chain.server, { metaContexts: [context] });
    try {
      const ours = coalesce(await collect(client, context, 0, 72 * MiB));
      expect(ours).toEqual(coalesce(await nbdinfoMap(chain.server.uri, context)));
      const depthAt = (offset: number): number => ours.find((e) => e.offset <= offset && offset < e.offset + e.length)!.type;
      expect([depthAt(MiB), depthAt(8 * MiB), depthAt(20 * MiB), depthAt(50 * MiB)]).toEqual([1, 1, 2, 0]);
    } finally {
      await client.close();
    }
  });

  it('iterates a sub-range with small requests: extents are clipped to the range and cover it', async () => {
    const client = await connect(chain.server, { metaContexts: [BASE_ALLOCATION], maxBlockStatusRequestBytes: 3 * MiB });
    try {
      const from = 2 * MiB + 5;
      const length = 50 * MiB;
      const ours = await collect(client, BASE_ALLOCATION, from, length);
      expect(ours[0]!.offset).toBe(from);
      let at = from;
      for (const e of ours) {
        expect(e.offset).toBe(at);
        expect(e.length).toBeGreaterThan(0);
        at += e.length;
      }
      expect(at).toBe(from + length);
      const clipped = coalesce(await nbdinfoMap(chain.server.uri))
        .map((e) => ({ offset: Math.max(e.offset, from), end: Math.min(e.offset + e.length, from + length), type: e.type }))
        .filter((e) => e.end > e.offset)
        .map((e) => ({ offset: e.offset, length: e.end - e.offset, type: e.type }));
      expect(coalesce(ours)).toEqual(clipped);
      // The zeroed clusters read as zero, and say so.
      const zero = ours.find((e) => e.offset <= 8 * MiB && e.offset + e.length > 8 * MiB)!;
      expect(zero.flags & nbdStateAllocation.zero).toBe(nbdStateAllocation.zero);
    } finally {
      await client.close();
    }
  });

  it('maps an export larger than 4 GiB in requests under 4 GiB, as nbdinfo does, and reads past 4 GiB', async () => {
    const image = join(dir, 'big.qcow2');
    await createImage(image, { format: 'qcow2', size: '10G' });
    await qemuIo(image, ['write -P 0x01 0 1M', 'write -P 0x02 5G 64K', 'write -P 0x03 10238M 2M']);
    const server = await startQemuNbd({ image, format: 'qcow2', socketPath: join(dir, 'big.sock') });
    servers.push(server);
    const client = await connect(server, { metaContexts: [BASE_ALLOCATION] });
    try {
      const ours = await collect(client, BASE_ALLOCATION, 0, 10 * 1024 * MiB);
      // At least three requests: no extent reaches past the 4 GiB - 64 KiB a request may cover.
      expect(ours.every((e) => e.length <= 0xffff0000)).toBe(true);
      expect(coalesce(ours)).toEqual(coalesce(await nbdinfoMap(server.uri)));
      expect(coalesce(ours).filter((e) => e.type === 0).map((e) => [e.offset / MiB, e.length / KiB])).toEqual([
        [0, 1024],
        [5120, 64],
        [10238, 2048],
      ]);
      const at5g = await client.read(5 * 1024 * MiB - 10, 20);
      expect([...at5g]).toEqual([...Buffer.alloc(10), ...Buffer.alloc(10, 0x02)]);
    } finally {
      await client.close();
    }
  });

  it('keeps exactly maxInFlight requests in flight, and no more (a proxy holds the replies back)', async () => {
    const proxyPath = join(dir, 'proxy.sock');
    // The proxy releases the replies after 1 s without a new request: a busy machine cannot cut the batch short.
    const proxy = await startCountingProxy(proxyPath, chain.server.socketPath!, 100, 1_000);
    const client = await NbdClient.connect({ address: { kind: 'unix', path: proxyPath }, maxInFlight: 8, maxReadRequestBytes: 1 * MiB });
    try {
      const data = await client.read(0, 24 * MiB);
      expect(data.equals(chain.raw.subarray(0, 24 * MiB))).toBe(true);
      expect(proxy.maxHeld()).toBe(8);
      expect(proxy.requests()).toBe(24);
      // Concurrent callers share the same bound.
      const [a, b] = await Promise.all([client.read(30 * MiB, 10 * MiB), client.read(60 * MiB, 12 * MiB)]);
      expect(a.equals(chain.raw.subarray(30 * MiB, 40 * MiB))).toBe(true);
      expect(b.equals(chain.raw.subarray(60 * MiB, 72 * MiB))).toBe(true);
    } finally {
      await client.close();
      await proxy.stop();
    }
  });

  it('lists metadata contexts (NBD_OPT_LIST_META_CONTEXT), including the exported bitmap', async () => {
    const address = { kind: 'unix', path: chain.server.socketPath! } as const;
    expect((await NbdClient.listMetaContexts({ address, queries: ['qemu:dirty-bitmap:'] })).sort()).toEqual(['qemu:dirty-bitmap:b0']);
    expect(await NbdClient.listMetaContexts({ address, queries: ['base:'] })).toEqual([BASE_ALLOCATION]);
  });

  it('refuses a context that is not exported, and an unknown export name, with NBD_ERROR', async () => {
    const err1 = await connect(chain.server, { metaContexts: ['qemu:dirty-bitmap:nope'] }).catch((e: unknown) => e);
    expect(isBlockrepError(err1) && err1.code).toBe('NBD_ERROR');
    expect((err1 as any).details.missingContexts).toEqual(['qemu:dirty-bitmap:nope']);
    const err2 = await connect(chain.server, { exportName: 'other' }).catch((e: unknown) => e);
    expect(isBlockrepError(err2) && err2.code).toBe('NBD_ERROR');
    expect((err2 as any).details.reply).toBe('NBD_REP_ERR_UNKNOWN');
  });

  it('connects by export name over loopback TCP', async () => {
    const server = await startQemuNbd({ image: plainRaw.image, format: 'raw', tcp: true, exportName: 'disk0' });
    servers.push(server);
    const client = await NbdClient.connect({ address: { kind: 'tcp', host: '127.0.0.1', port: server.port! }, exportName: 'disk0' });
    try {
      expect(client.info.exportBytes).toBe(5 * MiB + 512);
      const all = await client.read(0, client.info.exportBytes);
      expect(all.equals(plainRaw.raw)).toBe(true);
    } finally {
      await client.close();
    }
  });

  it('a qemu-nbd serving one client (its default) greets no second client: NBD_ERROR after the timeout', async () => {
    const server = await startQemuNbd({ image: plainRaw.image, format: 'raw', socketPath: join(dir, 'single.sock'), shared: 1 });
    servers.push(server);
    const first = await connect(server);
    const err = await connect(server, { handshakeTimeoutMs: 500 }).catch((e: unknown) => e);
    expect(isBlockrepError(err) && err.code).toBe('NBD_ERROR');
    expect((err as any).details).toMatchObject({ timeout: true, greeted: false });
    await first.close();
    const again = await connect(server);
    expect((await again.read(0, 4096)).equals(plainRaw.raw.subarray(0, 4096))).toBe(true);
    await again.close();
  });

  it('says NBD_UNAVAILABLE when nothing listens, and refuses requests after close', async () => {
    const err = await NbdClient.connect({ address: { kind: 'unix', path: join(dir, 'nothing.sock') } }).catch((e: unknown) => e);
    expect(isBlockrepError(err) && err.code).toBe('NBD_UNAVAILABLE');
    const client = await connect(plainRaw.server);
    await client.close();
    await client.close();
    const after = await client.read(0, 1).catch((e: unknown) => e);
    expect(isBlockrepError(after) && after.code).toBe('NBD_ERROR');
  });

  it('reads what the image holds, not a stale pattern (the oracle is not trivially equal)', () => {
    expect(chain.raw.subarray(MiB, MiB + 4).equals(Buffer.from([0x22, 0x22, 0x22, 0x22]))).toBe(true);
    expect(chain.raw.subarray(8 * MiB, 8 * MiB + 4).equals(Buffer.alloc(4))).toBe(true);
    expect(chain.raw.subarray(20 * MiB, 20 * MiB + 4).equals(Buffer.from([0x11, 0x11, 0x11, 0x11]))).toBe(true);
  });
});
