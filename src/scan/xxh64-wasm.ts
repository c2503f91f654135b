import xxhash from 'xxhash-wasm';

/**
 * xxHash64 (seed 0) over an arena of bytes that the hash function can read without a copy.
 *
 * xxhash-wasm's public functions (`h64Raw`, `create64().update`) copy their input into the
 * WebAssembly memory before hashing; that copy costs a third of the hashing time on large
 * blocks. So we keep the module's own instance and let the image reader write the blocks
 * straight into its linear memory: `view()` hands out a window of that memory to read into,
 * `hash()` hashes a window in place.
 *
 * xxhash-wasm does not export its instance, so `create` catches it as the package instantiates
 * it (a synchronous wrapper around `WebAssembly.instantiate`, restored at once). If a future
 * version of the package changes shape, or the in-place hash disagrees with the package's own
 * `h64Raw` on a test vector, we fall back to `h64Raw` over a plain buffer: slower, never wrong.
 */
export class Xxh64Wasm {
  /** True when hashing in place, false on the copying fallback. */
  readonly inPlace: boolean;
  readonly arenaBytes: number;
  private readonly bytes: Uint8Array;
  private readonly hashAt: (offset: number, length: number) => bigint;

  private constructor(inPlace: boolean, bytes: Uint8Array, hashAt: (offset: number, length: number) => bigint) {
    this.inPlace = inPlace;
    this.arenaBytes = bytes.byteLength;
    this.bytes = bytes;
    this.hashAt = hashAt;
  }

  /**
   * A hasher with an arena of `arenaBytes` bytes, all zero at first. Each call instantiates
   * its own module, so the arena is freed with the object (WebAssembly memory never shrinks).
   */
  static async create(arenaBytes: number): Promise<Xxh64Wasm> {
    const [instance, api] = await Promise.all([instantiateCapturing(), referenceApi()]);
    const exports = instance?.exports as Partial<XxhExports> | undefined;
    if (typeof exports?.mem?.grow === 'function' && typeof exports.xxh64 === 'function') {
      const mem = exports.mem;
      const xxh64 = exports.xxh64;
      // Grow once, before any view is handed out: growing detaches earlier views.
      const pages = Math.ceil(arenaBytes / WASM_PAGE) - mem.buffer.byteLength / WASM_PAGE;
      if (pages > 0) mem.grow(pages);
      const bytes = new Uint8Array(mem.buffer, 0, arenaBytes);
      const hasher = new Xxh64Wasm(true, bytes, (offset, length) => BigInt.asUintN(64, xxh64(offset, length, 0n)));
      if (hasher.selfTest(api)) return hasher;
    }
    const bytes = new Uint8Array(arenaBytes);
    return new Xxh64Wasm(false, bytes, (offset, length) => api.h64Raw(bytes.subarray(offset, offset + length)));
  }

  /** A window of the arena, for a reader to fill. Valid as long as this hasher. */
  view(offset: number, length: number): Uint8Array {
    return this.bytes.subarray(offset, offset + length);
  }

  /** xxh64 with seed 0 of the arena bytes [offset, offset + length). */
  hash(offset: number, length: number): bigint {
    return this.hashAt(offset, length);
  }

  /**
   * Compares the in-place path with the package's public function (on another instance: the
   * captured one's wrapper holds a view that our grow() detached) on a fixed pattern.
   */
  private selfTest(api: XxhApi): boolean {
    const length = Math.min(this.arenaBytes, 1000);
    const probe = this.view(0, length);
    for (let i = 0; i < length; i++) probe[i] = (i * 31 + 7) & 0xff;
    const expected = api.h64Raw(probe.slice());
    const actual = this.hash(0, length);
    probe.fill(0);
    return actual === expected;
  }
}

const WASM_PAGE = 65536;

type XxhApi = Awaited<ReturnType<typeof xxhash>>;

interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

interface XxhExports {
  mem: WasmMemory;
  xxh64(offset: number, length: number, seed: bigint): bigint;
}

interface WasmInstance {
  exports: Record<string, unknown>;
}

interface WasmNamespace {
  instantiate(...args: unknown[]): Promise<{ instance: WasmInstance }>;
}

let reference: Promise<XxhApi> | undefined;

/** The package's public API on an instance of its own, for the self-test and the fallback. */
function referenceApi(): Promise<XxhApi> {
  reference ??= xxhash();
  return reference;
}

async function instantiateCapturing(): Promise<WasmInstance | undefined> {
  const wasm = (globalThis as unknown as { WebAssembly: WasmNamespace }).WebAssembly;
  const original = wasm.instantiate;
  let captured: Promise<{ instance: WasmInstance }> | undefined;
  wasm.instantiate = function (this: unknown, ...args: unknown[]) {
    const result = original.apply(wasm, args);
    captured ??= result;
    return result;
  };
  let pending: Promise<XxhApi>;
  try {
    // xxhash() calls WebAssembly.instantiate synchronously, before its first await.
    pending = xxhash();
  } finally {
    wasm.instantiate = original;
  }
  await pending;
  return captured ? (await captured).instance : undefined;
}
