/**
 * A server-wide bound on request bytes held in memory at once (chunk bodies are checked whole):
 * acquire() waits until the budget has room, so many concurrent uploads queue instead of
 * exhausting memory. A single request larger than the whole budget still runs, alone.
 */
export class ByteBudget {
  private used = 0;
  private readonly waiting: Array<{ bytes: number; wake: () => void }> = [];

  constructor(private readonly capacity: number) {}

  async acquire(bytes: number): Promise<() => void> {
    const need = Math.min(bytes, this.capacity);
    if (this.waiting.length > 0 || this.used + need > this.capacity) {
      await new Promise<void>((wake) => this.waiting.push({ bytes: need, wake }));
    } else {
      this.used += need;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.used -= need;
      this.wakeWaiters();
    };
  }

  private wakeWaiters(): void {
    while (this.waiting.length > 0 && this.used + this.waiting[0]!.bytes <= this.capacity) {
      const next = this.waiting.shift()!;
      this.used += next.bytes;
      next.wake();
    }
  }
}
