/**
 * A bounded LRU of qcow2 L2 tables, keyed by their host offset. Each table is kept as a
 * Uint32Array in host byte order (byte-swapped once when loaded), so lookups in the hot path
 * are plain array reads: entry i is [2i] = high word, [2i + 1] = low word (standard L2), or
 * [4i .. 4i + 3] with the subcluster bitmap in the second pair (extended L2).
 *
 * Concurrent loads of the same table share one read.
 */
export class Qcow2L2Cache {
  private readonly tables = new Map<number, Uint32Array>();
  private readonly loading = new Map<number, Promise<Uint32Array>>();

  constructor(
    private readonly loadTable: (hostOffset: number) => Promise<Uint32Array>,
    /** At least 1. */
    private readonly maxTables: number,
  ) {}

  /** The table if cached (and marks it most recently used), else undefined. */
  peek(hostOffset: number): Uint32Array | undefined {
    const table = this.tables.get(hostOffset);
    if (table !== undefined && this.tables.size > 1) {
      // Map iteration order is insertion order: re-inserting makes it the newest.
      this.tables.delete(hostOffset);
      this.tables.set(hostOffset, table);
    }
    return table;
  }

  async get(hostOffset: number): Promise<Uint32Array> {
    const cached = this.peek(hostOffset);
    if (cached !== undefined) return cached;
    let pending = this.loading.get(hostOffset);
    if (pending === undefined) {
      pending = this.loadTable(hostOffset).then(
        (table) => {
          this.loading.delete(hostOffset);
          this.insert(hostOffset, table);
          return table;
        },
        (err: unknown) => {
          this.loading.delete(hostOffset);
          throw err;
        },
      );
      this.loading.set(hostOffset, pending);
    }
    return pending;
  }

  get size(): number {
    return this.tables.size;
  }

  private insert(hostOffset: number, table: Uint32Array): void {
    this.tables.set(hostOffset, table);
    while (this.tables.size > this.maxTables) {
      const oldest = this.tables.keys().next();
      if (oldest.done === true) break;
      this.tables.delete(oldest.value);
    }
  }
}
