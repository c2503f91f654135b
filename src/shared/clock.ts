/**
 * The time a component reads and waits on, injected so that tests can drive leases, renewals,
 * rate limits and gc cutoffs without sleeping. Production code uses `systemClock`; tests use a
 * ManualClock, whose time moves only when the test says so.
 */
export interface Clock {
  /** Wall-clock time, ms since the epoch (what is written into locks and compared with file times). */
  now(): number;
  /** A monotonic ms count for measuring intervals (never steps back when the wall clock does). */
  monotonicMs(): number;
  /** Resolves after `ms`. */
  sleep(ms: number): Promise<void>;
  /** Calls `fn` once after `ms`; never keeps the process alive by itself. */
  setTimer(fn: () => void, ms: number): ClockTimer;
}

export interface ClockTimer {
  cancel(): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonicMs: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  setTimer(fn, ms) {
    const timer = setTimeout(fn, ms);
    timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
};

interface PendingTimer {
  at: number;
  seq: number;
  fn: () => void;
}

/**
 * A clock for tests. Its time stands still until advance() moves it, firing the timers that
 * fall due in order, each at its own time, and letting the work they start run before the
 * next one fires. With `autoAdvance`, sleep() moves the clock itself (a caller that sleeps is
 * the only one waiting), so a rate limiter's pacing is checked exactly and at once.
 */
export class ManualClock implements Clock {
  private wall: number;
  private mono = 0;
  private seq = 0;
  private timers: PendingTimer[] = [];
  private readonly autoAdvance: boolean;

  /** Starts at `startMs` (ms since the epoch; a fixed date, so runs are repeatable). */
  constructor(startMs = Date.UTC(2026, 0, 1), options: { autoAdvance?: boolean } = {}) {
    this.wall = startMs;
    this.autoAdvance = options.autoAdvance ?? false;
  }

  now(): number {
    return this.wall;
  }

  monotonicMs(): number {
    return this.mono;
  }

  /** Timers not yet fired. */
  get pendingTimers(): number {
    return this.timers.length;
  }

  setTimer(fn: () => void, ms: number): ClockTimer {
    const timer: PendingTimer = { at: this.mono + Math.max(0, ms), seq: this.seq++, fn };
    this.timers.push(timer);
    return {
      cancel: () => {
        this.timers = this.timers.filter((t) => t !== timer);
      },
    };
  }

  sleep(ms: number): Promise<void> {
    if (this.autoAdvance) {
      this.move(Math.max(0, ms));
      return Promise.resolve();
    }
    return new Promise((resolve) => this.setTimer(resolve, ms));
  }

  /**
   * Moves time forward by `ms`, firing due timers in order; after each, waits until the
   * promise work it started has settled (in-memory work completes within a few turns).
   */
  async advance(ms: number): Promise<void> {
    const end = this.mono + ms;
    for (;;) {
      const next = this.nextDue(end);
      if (next === undefined) break;
      this.timers = this.timers.filter((t) => t !== next);
      this.setMono(next.at);
      next.fn();
      await settle();
    }
    this.setMono(end);
    await settle();
  }

  /** Steps the wall clock alone (an NTP correction): monotonic time and timers do not move. */
  stepWall(ms: number): void {
    this.wall += ms;
  }

  private move(ms: number): void {
    const end = this.mono + ms;
    for (let next = this.nextDue(end); next !== undefined; next = this.nextDue(end)) {
      this.timers = this.timers.filter((t) => t !== next);
      this.setMono(next.at);
      next.fn();
    }
    this.setMono(end);
  }

  private nextDue(end: number): PendingTimer | undefined {
    let best: PendingTimer | undefined;
    for (const t of this.timers) if (t.at <= end && (best === undefined || t.at < best.at || (t.at === best.at && t.seq < best.seq))) best = t;
    return best;
  }

  private setMono(to: number): void {
    this.wall += to - this.mono;
    this.mono = to;
  }
}

/** Lets queued promise callbacks and immediates run: a few macrotask turns. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
