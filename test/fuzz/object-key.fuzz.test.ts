import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Repository } from '../../src/repository/repository.js';
import { keyFileKey } from '../../src/repository/repository-key-store.js';
import { diskIdToPathComponent } from '../../src/shared/disk-id.js';
import { diskOfListedKey, keyFromPath, parseListPrefix, parseObjectKey, type ObjectRef } from '../../src/server/object-key.js';
import { checkProperty, replayCorpus, underContract, type DecoderContract } from './fuzz-kit.js';

/**
 * The server's object key parser (object-key.ts): every request path and key, however
 * spelled, is refused with BAD_REQUEST or parsed into a reference that rebuilds to the very
 * same key — one spelling per object, nothing outside the repository's own names.
 */
const MODULE = 'object-key';
const contract: DecoderContract = { codes: ['BAD_REQUEST'], maxAllocBytes: 1024 * 1024, maxMs: 1000 };

const segment = fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/).filter((s) => s !== '.' && s !== '..');
const diskId = fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => s.join('/')).filter((s) => s.length <= 200);
const versionId = fc
  .tuple(fc.integer({ min: 0, max: Date.UTC(9999, 11, 31) }), fc.stringMatching(/^[0-9a-f]{6}$/))
  .map(([t, suffix]) => `${new Date(t).toISOString().replace(/[-:]/g, '')}-${suffix}`);
const chunkId = fc.stringMatching(/^[0-9a-f]{64}$/);

const validKey = fc.oneof(
  fc.constant('blockrep.json'),
  chunkId.map((id) => Repository.chunkKey(id)),
  fc.tuple(diskId, versionId).map(([d, v]) => Repository.manifestKey(d, v)),
  diskId.map((d) => `locks/${diskIdToPathComponent(d)}.lock`),
);

/** Keys a client might send: valid ones with characters inserted, replaced or removed, encodings and traversals. */
const nastyPiece = fc.constantFrom('/', '//', '.', '..', '%', '%2F', '%2f', '%2E', '%2e', '%25', '%00', '\0', '\\', '%5C', '.tmp-', '\u{d800}', '\u{1f600}', ' ', '?', '#', 'é');
const suspectKey = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.tuple(validKey, fc.array(fc.tuple(fc.nat(), nastyPiece, fc.nat(3)), { minLength: 1, maxLength: 3 })).map(([key, edits]) => {
    let out = key;
    for (const [at, piece, drop] of edits) {
      const i = at % (out.length + 1);
      out = out.slice(0, i) + piece + out.slice(i + drop);
    }
    return out;
  }),
);

/** The key a reference names, rebuilt with the repository's own key functions. */
function rebuilt(ref: ObjectRef): string {
  switch (ref.kind) {
    case 'config':
      return 'blockrep.json';
    case 'chunk':
      return Repository.chunkKey(ref.chunkId);
    case 'manifest':
      return Repository.manifestKey(ref.diskId, ref.versionId);
    case 'lock':
      return `locks/${diskIdToPathComponent(ref.diskId)}.lock`;
    case 'key':
      return keyFileKey(ref.keyId);
  }
}

async function checkKey(key: string): Promise<void> {
  const parsed = await underContract(contract, () => parseObjectKey(key));
  if (parsed.ok) expect(rebuilt(parsed.value)).toBe(key);
  const scope = await underContract(contract, () => parseListPrefix(key));
  if (scope.ok && scope.value.kind === 'disk') expect(`disks/${diskIdToPathComponent(scope.value.diskId)}/`).toBe(key);
  const listed = diskOfListedKey(key);
  if (listed !== undefined) expect(key.startsWith(`disks/${diskIdToPathComponent(listed)}/`) || key === `locks/${diskIdToPathComponent(listed)}.lock`).toBe(true);
}

/** A lone surrogate has no percent-encoding: such a key only travels as it is. */
function percentEncoded(key: string): string | undefined {
  try {
    return encodeURIComponent(key);
  } catch {
    return undefined;
  }
}

async function checkPath(path: string): Promise<void> {
  const key = await underContract(contract, () => keyFromPath(path));
  if (!key.ok) return;
  expect(key.value.split('/').every((s) => s !== '' && !/[\\\0]/.test(s))).toBe(true);
  await checkKey(key.value);
}

describe('object keys under arbitrary strings', () => {
  it('replays its corpus within the contract', async () => {
    await replayCorpus(MODULE, async (bytes) => {
      await checkKey(bytes.toString('utf8'));
      await checkPath(bytes.toString('utf8'));
    });
  });

  it('round-trips every key the repository makes, also through the percent-encoded request path', async () => {
    await checkProperty(MODULE, validKey, (key) => {
      expect(rebuilt(parseObjectKey(key))).toBe(key);
      expect(keyFromPath(key.split('/').map(encodeURIComponent).join('/'))).toBe(key);
    }, 300);
    await checkProperty(MODULE, diskId, (d) => {
      expect(parseListPrefix(`disks/${diskIdToPathComponent(d)}/`)).toEqual({ kind: 'disk', diskId: d });
      expect(diskOfListedKey(`locks/${diskIdToPathComponent(d)}.lock`)).toBe(d);
    }, 200);
  });

  it('any other key or path is refused with BAD_REQUEST, or names its object in its one spelling', async () => {
    await checkProperty(MODULE, suspectKey, async (key) => {
      await checkKey(key);
      await checkPath(key);
      const encoded = percentEncoded(key);
      if (encoded !== undefined) await checkPath(encoded);
    }, 500);
  });
});
