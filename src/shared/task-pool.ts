/**
 * Runs async tasks with at most `limit` in flight. submit() waits while the pool is full, which
 * is how producers (the scan loop, a restore) get backpressure; the first failure is kept and
 * rethrown by the next submit() or by drain(), so no error is lost and no task is left running.
 */
export class TaskPool {
  private readonly running = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;

  constructor(private readonly limit: number) {}

  async submit(task: () => Promise<void>): Promise<void> {
    this.throwIfFailed();
    while (this.running.size >= this.limit) {
      await Promise.race(this.running);
      this.throwIfFailed();
    }
    const p: Promise<void> = task()
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => {
        this.running.delete(p);
      });
    this.running.add(p);
  }

  /** Waits for every task; rethrows the first failure. */
  async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running);
    this.throwIfFailed();
  }

  /** Waits for every task, ignoring failures (cleanup paths). */
  async settle(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }
}
