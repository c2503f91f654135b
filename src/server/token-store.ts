import { timingSafeEqual } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { z } from 'zod';
import { TOKEN_PATTERN } from '../protocol/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { UNRESTRICTED, type Principal } from './access-policy.js';
import { hashSecret, readTokensFile, type TokenEntry } from '../tokens/index.js';

// The scheme is case-insensitive (RFC 7235).
const authorizationSchema = z.string().max(1024).regex(/^Bearer +(\S+)$/i);

/**
 * Turns an Authorization header into a Principal. The tokens file is stat()ed on every request
 * and re-read when it changed (inode, size or mtime), so `blockrep token create/revoke` take
 * effect without a restart. A file that became unreadable or invalid fails closed: every
 * request is refused (503) until it is fixed.
 */
export class TokenStore {
  private stamp = '';
  private tokens: TokenEntry[] = [];
  private problem: string | undefined;
  private reloading: Promise<void> | undefined;

  private constructor(private readonly path: string | undefined) {}

  /** Without a path: no authentication (every request is UNRESTRICTED). */
  static async open(path: string | undefined): Promise<TokenStore> {
    const store = new TokenStore(path);
    if (path !== undefined) {
      await readTokensFile(path); // refuse to start on a bad file, with its message
      await store.refresh();
      if (store.problem) throw new BlockrepError('USAGE', store.problem);
    }
    return store;
  }

  get enabled(): boolean {
    return this.path !== undefined;
  }

  async authenticate(header: string | undefined): Promise<Principal> {
    if (this.path === undefined) return UNRESTRICTED;
    await this.refresh();
    if (this.problem !== undefined) throw new BlockrepError('UNAVAILABLE', 'the server cannot read its tokens file; ask its administrator');
    if (header === undefined) {
      throw new BlockrepError('UNAUTHORIZED', 'this repository server needs an access token: set BLOCKREP_TOKEN or give --token-file');
    }
    const parsed = authorizationSchema.safeParse(header);
    const secret = parsed.success ? /^Bearer +(\S+)$/i.exec(parsed.data)![1]! : '';
    if (!TOKEN_PATTERN.test(secret)) throw new BlockrepError('UNAUTHORIZED', 'the Authorization header is not a blockrep bearer token');
    const presented = Buffer.from(hashSecret(secret), 'hex');
    let found: TokenEntry | undefined;
    // Compare against every token, in constant time each, whatever matched.
    for (const t of this.tokens) {
      if (timingSafeEqual(presented, Buffer.from(t.hash, 'hex'))) found = t;
    }
    if (!found) throw new BlockrepError('UNAUTHORIZED', 'this access token is not known to the server (revoked, or a typo)');
    return { name: found.name, disks: found.disks, rights: new Set(found.rights) };
  }

  private async refresh(): Promise<void> {
    if (this.reloading) return this.reloading;
    this.reloading = this.reload().finally(() => {
      this.reloading = undefined;
    });
    return this.reloading;
  }

  private async reload(): Promise<void> {
    const path = this.path!;
    let stamp: string;
    try {
      const s = await stat(path, { bigint: true });
      stamp = `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
    } catch (err) {
      this.stamp = '';
      this.tokens = [];
      this.problem = `tokens file ${path} cannot be read: ${(err as Error).message}`;
      return;
    }
    if (stamp === this.stamp) return;
    try {
      this.tokens = (await readTokensFile(path)).tokens;
      this.problem = undefined;
    } catch (err) {
      this.tokens = [];
      this.problem = isBlockrepError(err) ? err.message : String(err);
    }
    this.stamp = stamp;
  }

  /** Why the store refuses everything, for the server log; undefined when it is fine. */
  get currentProblem(): string | undefined {
    return this.problem;
  }
}
