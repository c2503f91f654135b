import { randomBytes } from 'node:crypto';
import { contentTag, type Backend } from '../backend/index.js';
import { BlockrepError, isBlockrepError, diskIdToPathComponent, currentHolder, holderIsGone, lockHolderSchema, systemClock, type Clock, type ClockTimer, type LockHolder } from '../shared/index.js';

/** A holder that stops renewing loses its lock this long after its last renewal. */
export const DEFAULT_LEASE_MS = 5 * 60_000;
/** Bounds of a lease; the server refuses a lock that claims a longer one. */
export const MIN_LEASE_MS = 100;
export const MAX_LEASE_MS = 24 * 3600_000;
/** Overrides the lease this process takes (tests use short ones). */
export const LEASE_ENV = 'BLOCKREP_LOCK_LEASE_MS';
/** Renewals per lease: every 30 s with the default lease, so several may fail without losing it. */
const RENEWALS_PER_LEASE = 10;

/** What a contender sees of an existing lock. */
interface SeenLock {
  raw: Buffer;
  holder: LockHolder | undefined;
  /** Since the lock was last written, by the repository's clock when the backend can tell. */
  ageMs: number | undefined;
}

/**
 * One writer per disk: an object `locks/<disk>.lock` created exclusively, held as a **lease**.
 * The holder rewrites it every lease/10 (30 s by default); a lock not rewritten within its
 * lease (5 min by default, named in the lock) has expired — its holder died, on whatever host —
 * and anyone may take it over. Expiry is judged by the lock's age on the repository's side (the
 * file's modification time against the local filesystem's clock, or the server's), not by
 * timestamps the holder wrote. A lock whose holder was a process on this host that is gone is
 * taken over at once. Each acquisition has a random id: a holder that finds another id in its
 * lock has been taken over and fails (LOCK_LOST) before it publishes; it never removes a
 * successor's lock.
 *
 * Renewing, taking over and releasing replace the lock only if it still has the content this
 * process saw (backend replaceIfMatch): atomic in a server, which serialises them for all its
 * clients, so a renewal that arrives late (retried across an outage, or from a holder paused
 * for longer than its lease) can never overwrite a successor's lock. A local directory shared
 * by several processes gets the same check without that atomicity (a read and a rename).
 */
export class DiskLock {
  private timer: ClockTimer | undefined;
  private renewing: Promise<void> | undefined;
  private released = false;
  private lost: BlockrepError | undefined;
  private lastError: unknown;
  private readonly lostListeners: Array<(error: BlockrepError) => void> = [];

  private constructor(
    private readonly backend: Backend,
    private readonly key: string,
    private readonly diskId: string,
    private readonly holder: LockHolder & { lockId: string; leaseMs: number },
    /** The lock's content as this holder last wrote it. */
    private written: Buffer,
    /** Times the renewals and the holder's own timestamps; the lease's age is the storage's. */
    private readonly clock: Clock,
  ) {}

  static async acquire(backend: Backend, diskId: string, purpose: string, options: { leaseMs?: number; clock?: Clock } = {}): Promise<DiskLock> {
    const key = `locks/${diskIdToPathComponent(diskId)}.lock`;
    const leaseMs = options.leaseMs ?? leaseFromEnv();
    const clock = options.clock ?? systemClock;
    const createdAt = new Date(clock.now()).toISOString();
    const holder = { ...currentHolder(purpose), createdAt, lockId: randomBytes(12).toString('hex'), leaseMs, renewedAt: createdAt };
    const body = Buffer.from(JSON.stringify(holder));
    const held = (): DiskLock => {
      const lock = new DiskLock(backend, key, diskId, holder, body, clock);
      lock.schedule();
      return lock;
    };
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await backend.write(key, body, { exclusive: true });
        return held();
      } catch (err) {
        if (!isBlockrepError(err) || err.code !== 'EXISTS') throw err;
      }
      const seen = await inspect(backend, key, clock);
      if (seen === undefined) continue; // released meanwhile
      if (staleness(seen) !== undefined) {
        // Replaced in one step, and only if nobody renewed or took it since it was judged.
        if (await replaceIfMatch(backend, key, seen.raw, body)) return held();
        continue;
      }
      throw new BlockrepError('REPO_LOCKED', `disk ${diskId} is locked: ${describe(seen)}. ${whatToDo(seen, key, backend.location)}`, {
        details: seen.holder ? { holder: publicHolder(seen.holder), ...(seen.ageMs !== undefined ? { lockAgeMs: Math.round(seen.ageMs) } : {}) } : {},
      });
    }
    throw new BlockrepError('REPO_LOCKED', `disk ${diskId} is locked and the lock could not be taken over (other processes keep taking it); try again`);
  }

  get leaseMs(): number {
    return this.holder.leaseMs;
  }

  /**
   * Renews the lock now and fails with LOCK_LOST if it is no longer this holder's: called right
   * before a version is published, so a run whose lock was taken over publishes nothing.
   */
  async assertHeld(): Promise<void> {
    await this.renewing;
    if (this.lost) throw this.lost;
    await this.renew();
    if (this.lost) throw this.lost;
  }

  /** Throws LOCK_LOST if a renewal found the lock taken over. */
  throwIfLost(): void {
    if (this.lost) throw this.lost;
  }

  /**
   * Rejects with LOCK_LOST as soon as a renewal finds the lock taken over (never resolves):
   * raced against long waits, so that a run that lost its lock stops sending.
   */
  whenLost(): Promise<never> {
    const p = new Promise<never>((_, reject) => {
      if (this.lost) reject(this.lost);
      else this.lostListeners.push(reject);
    });
    p.catch(() => undefined); // a caller that stopped waiting has its answer elsewhere
    return p;
  }

  /** Stops renewing and removes the lock if it is still this holder's. */
  async release(): Promise<void> {
    this.released = true;
    this.timer?.cancel();
    await this.renewing;
    if (this.lost) return; // a successor's lock is not ours to remove
    if (await replaceIfMatch(this.backend, this.key, this.written, null)) return;
    // A renewal whose answer was lost may have stored a newer content of ours.
    const seen = await inspect(this.backend, this.key, null);
    if (seen?.holder?.lockId === this.holder.lockId) await replaceIfMatch(this.backend, this.key, seen.raw, null);
  }

  private schedule(): void {
    if (this.released || this.lost) return;
    // The clock's timers never keep the process alive: a lock does not hold it up by itself.
    this.timer = this.clock.setTimer(() => {
      this.renewing = this.renew()
        .catch((err: unknown) => {
          // A failed renewal (the link is down, the server restarts) is tried again at the next
          // tick; the lease allows for several. assertHeld() decides before anything is published.
          this.lastError = err;
        })
        .finally(() => {
          this.renewing = undefined;
          this.schedule();
        });
    }, Math.max(10, Math.floor(this.holder.leaseMs / RENEWALS_PER_LEASE)));
  }

  /** Rewrites the lock (its modification time is the renewal) if it is still ours. */
  private async renew(): Promise<void> {
    if (this.released || this.lost) return;
    const next = Buffer.from(JSON.stringify({ ...this.holder, renewedAt: new Date(this.clock.now()).toISOString() }));
    if (await replaceIfMatch(this.backend, this.key, this.written, next)) {
      this.written = next;
      this.lastError = undefined;
      return;
    }
    const seen = await inspect(this.backend, this.key, null);
    if (seen?.holder?.lockId === this.holder.lockId) {
      // Ours, as an earlier renewal left it whose answer was lost: renew from there.
      if (await replaceIfMatch(this.backend, this.key, seen.raw, next)) {
        this.written = next;
        this.lastError = undefined;
      }
      return;
    }
    const by = seen ? `it is now held by ${describe(seen)}` : 'it was removed';
    this.lost = new BlockrepError(
      'LOCK_LOST',
      `the lock of disk ${this.diskId} was taken from this run (${by}): it had not been renewed within its lease of ${seconds(this.holder.leaseMs)}` +
        `${this.lastError instanceof Error ? ` (last renewal failure: ${this.lastError.message})` : ''}. Nothing was published; chunks already stored stay for the next run. Run the backup again.`,
      { details: seen?.holder ? { holder: publicHolder(seen.holder) } : {} },
    );
    for (const listener of this.lostListeners.splice(0)) listener(this.lost);
  }
}

function leaseFromEnv(): number {
  const text = process.env[LEASE_ENV];
  if (text === undefined || text === '') return DEFAULT_LEASE_MS;
  const ms = Number(text);
  if (!Number.isSafeInteger(ms) || ms < MIN_LEASE_MS || ms > MAX_LEASE_MS) {
    throw new BlockrepError('USAGE', `${LEASE_ENV} must be a whole number of milliseconds from ${MIN_LEASE_MS} to ${MAX_LEASE_MS}`);
  }
  return ms;
}

/**
 * The lock as it is now. A contender judging it passes its clock and also gets its age; the
 * holder itself (null) only needs to know whose lock it is.
 */
async function inspect(backend: Backend, key: string, clock: Clock | null): Promise<SeenLock | undefined> {
  let raw: Buffer;
  try {
    raw = await backend.read(key);
  } catch (err) {
    if (isBlockrepError(err) && err.code === 'NOT_FOUND') return undefined;
    throw err;
  }
  let holder: LockHolder | undefined;
  try {
    holder = lockHolderSchema.parse(JSON.parse(raw.toString('utf8')));
  } catch {
    holder = undefined; // damaged: judged by its age alone
  }
  let ageMs: number | undefined;
  if (clock === null) {
    // The holder itself: whose lock it is is all it needs.
  } else if (backend.objectAgeMs) {
    ageMs = await backend.objectAgeMs(key);
    if (ageMs === undefined) return undefined; // removed between the two requests
  } else if (holder) {
    // No storage clock to ask: the holder's own renewal time against ours.
    const at = Date.parse(holder.renewedAt ?? holder.createdAt);
    if (Number.isFinite(at)) ageMs = Math.max(0, clock.now() - at);
  }
  return { raw, holder, ageMs };
}

/** Why a lock may be taken over, or undefined while it holds. */
function staleness(seen: SeenLock): string | undefined {
  if (seen.holder && holderIsGone(seen.holder)) return 'its process is gone';
  if (seen.ageMs !== undefined && seen.ageMs > leaseOf(seen.holder)) return 'its lease expired';
  return undefined;
}

/** A lock without a lease (written before leases existed) holds as long as the default one. */
function leaseOf(holder: LockHolder | undefined): number {
  const ms = holder?.leaseMs;
  return ms !== undefined && ms >= MIN_LEASE_MS && ms <= MAX_LEASE_MS ? ms : DEFAULT_LEASE_MS;
}

/**
 * Replaces the lock with `next` (removes it when null) if its content is still `expected`.
 * Backends without conditional replacement get a read and a compare first (not atomic).
 */
async function replaceIfMatch(backend: Backend, key: string, expected: Buffer, next: Buffer | null): Promise<boolean> {
  if (backend.replaceIfMatch) return backend.replaceIfMatch(key, contentTag(expected), next);
  const now = await inspect(backend, key, null);
  if (now === undefined || !now.raw.equals(expected)) return false;
  if (next === null) await backend.remove(key);
  else await backend.write(key, next);
  return true;
}

function describe(seen: SeenLock): string {
  const h = seen.holder;
  if (!h) return `an unreadable lock${seen.ageMs !== undefined ? ` last written ${seconds(seen.ageMs)} ago` : ''}`;
  const renewed = seen.ageMs !== undefined ? `, last renewed ${seconds(seen.ageMs)} ago${h.renewedAt ? ` (${h.renewedAt})` : ''}` : h.renewedAt ? `, last renewed ${h.renewedAt}` : '';
  return `${h.purpose} by process ${h.pid} on ${h.host} since ${h.createdAt}${renewed}, lease ${seconds(leaseOf(h))}`;
}

function whatToDo(seen: SeenLock, key: string, location: string): string {
  const lease = leaseOf(seen.holder);
  const left = seen.ageMs !== undefined ? Math.max(0, lease - seen.ageMs) : lease;
  return (
    `Wait for it to finish. If that process died, its lock expires ${seconds(lease)} after its last renewal (in about ${seconds(left)}) and the next run takes it over; ` +
    `to take it over sooner, make sure no blockrep process works on this disk any more, then remove ${key} in ${location}`
  );
}

/** A holder for messages and --json details: without its lock id (which would let others renew it). */
function publicHolder(holder: LockHolder): Omit<LockHolder, 'lockId'> {
  const { lockId: _, ...rest } = holder;
  return rest;
}

function seconds(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}
