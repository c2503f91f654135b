import { BlockrepError } from '../shared/index.js';

/**
 * A server-wide bound on request bytes held in memory, with a share per client. Requests take
 * from it as their bodies arrive (never the declared length up front), through a lease that
 * gives everything back when the request ends. A client (a token, a remote address) at its
 * share is refused at once with UNAVAILABLE (503, Retry-After: the client retries); a request
 * that finds the whole budget full waits for room, at most `waitMs`, then is refused the same
 * way — so requests holding part of the budget and waiting for more cannot wait for each other
 * forever.
 */
export class ByteBudget {
  private used = 0;
  private readonly perClient = new Map<string, number>();
  private readonly waiting: Array<{ bytes: number; wake: () => void }> = [];

  constructor(
    private readonly capacity: number,
    private readonly clientCapacity: number,
    private readonly waitMs: number,
  ) {}

  /** A request's account; `clients` are the keys it is counted under (its address, its token). */
  lease(clients: string[]): BudgetLease {
    return new BudgetLease(this, clients);
  }

  /** Bytes held now, by everybody (for tests and the log). */
  get usedBytes(): number {
    return this.used;
  }

  /** @internal: BudgetLease.take */
  async reserve(bytes: number, clients: readonly string[]): Promise<void> {
    for (const client of clients) {
      const held = this.perClient.get(client) ?? 0;
      if (held + bytes > this.clientCapacity) {
        throw new BlockrepError('UNAVAILABLE', `this client holds ${held} bytes of request data on the server already, its share is ${this.clientCapacity}: retry when its other uploads are done`);
      }
    }
    for (const client of clients) this.perClient.set(client, (this.perClient.get(client) ?? 0) + bytes);
    if (this.waiting.length === 0 && this.used + bytes <= this.capacity) {
      this.used += bytes;
      return;
    }
    const need = Math.min(bytes, this.capacity); // a request larger than everything runs alone
    const granted = await new Promise<boolean>((resolve) => {
      const entry = {
        bytes: need,
        wake: () => {
          clearTimeout(timer);
          resolve(true);
        },
      };
      const timer = setTimeout(() => {
        this.waiting.splice(this.waiting.indexOf(entry), 1);
        resolve(false);
        this.wakeWaiters(); // the head may have been the one blocking smaller requests
      }, this.waitMs);
      this.waiting.push(entry);
    });
    if (!granted) {
      this.forget(bytes, clients);
      throw new BlockrepError('UNAVAILABLE', 'the server is at its memory budget for request data: retry shortly');
    }
    this.used += bytes - need;
  }

  /** @internal: BudgetLease.release */
  free(bytes: number, clients: readonly string[]): void {
    this.used -= bytes;
    this.forget(bytes, clients);
    this.wakeWaiters();
  }

  private forget(bytes: number, clients: readonly string[]): void {
    for (const client of clients) {
      const left = (this.perClient.get(client) ?? 0) - bytes;
      if (left > 0) this.perClient.set(client, left);
      else this.perClient.delete(client);
    }
  }

  private wakeWaiters(): void {
    while (this.waiting.length > 0 && this.used + this.waiting[0]!.bytes <= this.capacity) {
      const next = this.waiting.shift()!;
      this.used += next.bytes;
      next.wake();
    }
  }
}

/** Rounds what a body takes up to this, so a body arriving in small pieces does not ask each time. */
const STEP_BYTES = 256 * 1024;

/** What one request holds of a ByteBudget. */
export class BudgetLease {
  private held = 0;
  private readonly clients: string[];
  private closed = false;

  constructor(
    private readonly budget: ByteBudget,
    clients: string[],
  ) {
    this.clients = [...clients];
  }

  /** Counts the request under another key as well (its token, once it is known); before any take. */
  addClient(client: string): void {
    if (this.held > 0) throw new BlockrepError('INTERNAL', 'a budget lease gained a client after it took bytes');
    this.clients.push(client);
  }

  get heldBytes(): number {
    return this.held;
  }

  /** Holds at least `total` bytes (taking up to `upTo` at once, in steps). */
  async ensure(total: number, upTo = total): Promise<void> {
    if (this.closed) throw new BlockrepError('INTERRUPTED', 'the request is over');
    if (this.held >= total) return;
    const target = Math.max(total, Math.min(upTo, Math.ceil(total / STEP_BYTES) * STEP_BYTES));
    const bytes = target - this.held;
    await this.budget.reserve(bytes, this.clients);
    if (this.closed) {
      this.budget.free(bytes, this.clients);
      throw new BlockrepError('INTERRUPTED', 'the request is over');
    }
    this.held += bytes;
  }

  /** Gives back what is held beyond `keep` bytes. */
  shrink(keep: number): void {
    if (this.held <= keep) return;
    this.budget.free(this.held - keep, this.clients);
    this.held = keep;
  }

  /** Gives everything back; the lease takes nothing more. */
  release(): void {
    this.closed = true;
    this.shrink(0);
  }
}
