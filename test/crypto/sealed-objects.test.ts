import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../src/backend/memory/memory-backend.js';
import { decodeChunk, encodeChunk } from '../../src/chunk/index.js';
import { MANIFEST_PAGE_BYTES, chunkEnvelopeProblem, createKeyFile, deriveRepositoryKeys, newMasterKey, openKeyFile, plainBytesOf, sealedBytesOf } from '../../src/crypto/index.js';
import { SealedManifestBackend } from '../../src/repository/sealed-manifest-backend.js';

const REPO = 'ab'.repeat(16);
const keys = deriveRepositoryKeys(newMasterKey(), REPO);

describe('sealed chunks', () => {
  it('round-trip, and open only under their own id and key', () => {
    const raw = Buffer.from('a known block '.repeat(5000));
    const chunk = encodeChunk(raw, { keys });
    expect(chunkEnvelopeProblem(chunk.blob, 1 << 20)).toBeUndefined();
    expect(decodeChunk(chunk.blob, chunk.id, 1 << 20, keys).equals(raw)).toBe(true);
    const other = encodeChunk(randomBytes(1000), { keys });
    expect(() => decodeChunk(chunk.blob, other.id, 1 << 20, keys)).toThrow(/does not open/);
    expect(() => decodeChunk(chunk.blob, chunk.id, 1 << 20, deriveRepositoryKeys(newMasterKey(), REPO))).toThrow(/does not open/);
    // Equal blocks, equal ids (dedup); not the SHA-256 of the plaintext.
    expect(encodeChunk(raw, { keys }).id).toBe(chunk.id);
    expect(encodeChunk(raw).id).not.toBe(chunk.id);
  });
});

describe('sealed manifests in pages', () => {
  it('sizes map one-to-one', () => {
    for (const n of [1, 100, MANIFEST_PAGE_BYTES - 1, MANIFEST_PAGE_BYTES, MANIFEST_PAGE_BYTES + 1, 5 * MANIFEST_PAGE_BYTES + 7]) {
      expect(plainBytesOf(sealedBytesOf(n))).toBe(n);
    }
    expect(plainBytesOf(sealedBytesOf(MANIFEST_PAGE_BYTES) + 1)).toBeUndefined();
  });

  it('reads any range through the pages, and refuses one moved, cut or relabelled', async () => {
    const inner = new MemoryBackend();
    const view = new SealedManifestBackend(inner, keys.sealKey);
    const plain = randomBytes(3 * MANIFEST_PAGE_BYTES + 999);
    const key = 'disks/vm/20261203T000000.000Z-000001.manifest';
    await view.write(key, (async function* () {
      for (let at = 0; at < plain.length; at += 10_000) yield plain.subarray(at, at + 10_000);
    })());
    expect(await view.size(key)).toBe(plain.length);
    for (const [off, len] of [[0, 12], [MANIFEST_PAGE_BYTES - 5, 10], [1, 3 * MANIFEST_PAGE_BYTES], [plain.length - 4, 100]] as const) {
      expect((await view.read(key, off, len)).equals(plain.subarray(off, off + len))).toBe(true);
    }
    const sealed = await inner.read(key);
    expect(sealed.includes(plain.subarray(0, 16))).toBe(false);
    // Under another key (another disk or version): nothing opens.
    const other = 'disks/vm/20261203T000000.000Z-000002.manifest';
    await inner.write(other, sealed);
    await expect(new SealedManifestBackend(inner, keys.sealKey).read(other, 0, 12)).rejects.toThrow(/copied from another disk or version/);
    // Cut after a whole page: the page that is now last was not sealed as the last.
    const cut = 'disks/vm/20261203T000000.000Z-000003.manifest';
    await inner.write(cut, sealed.subarray(0, 16 + 2 * (MANIFEST_PAGE_BYTES + 40)));
    const cutView = new SealedManifestBackend(inner, keys.sealKey);
    await expect(cutView.read(cut, MANIFEST_PAGE_BYTES + 1, 10)).rejects.toThrow(/REPO_CORRUPT|does not open/);
  });
});

describe('key files', () => {
  it('open with their passphrase only', async () => {
    const master = newMasterKey();
    const file = await createKeyFile({ masterKey: master, passphrase: 'pw', repository: REPO, label: 't', now: new Date(), scrypt: { N: 2 ** 14, r: 8, p: 1 } });
    expect(Buffer.from((await openKeyFile(file, 'pw'))!).equals(Buffer.from(master))).toBe(true);
    expect(await openKeyFile(file, 'pW')).toBeUndefined();
    expect(await openKeyFile({ ...file, repository: 'cd'.repeat(16) }, 'pw')).toBeUndefined();
  });
});
