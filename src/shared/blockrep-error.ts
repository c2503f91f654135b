/**
 * Every error blockrep raises on purpose carries a stable `code`; callers, the CLI's exit-code
 * table (cli/exit-codes.ts) and the HTTP status table (server/http-status.ts) match on the
 * code, never on the message text.
 * The message says what is wrong and, where it can, what to do about it.
 */
export const errorCodes = [
  // usage and configuration
  'USAGE', // bad command-line arguments
  'CONFIG_INVALID', // a job configuration file with mistakes (each named by file, line and path)
  'PARTIAL_FAILURE', // blockrep run: some VMs were backed up, others failed (the report names them)
  'RUN_FAILED', // blockrep run: no VM could be backed up
  'INVALID_DISK_ID',
  'INVALID_VERSION_ID',
  'INVALID_SIZE',
  // images
  'IMAGE_NOT_FOUND',
  'IMAGE_UNREADABLE',
  'IMAGE_UNSUPPORTED', // a valid image using a feature blockrep refuses (encryption, external data...)
  'IMAGE_CORRUPT', // an image whose structure is damaged or truncated
  'BACKING_LOOP',
  // repository
  'REPO_NOT_FOUND',
  'REPO_FORMAT', // repository or manifest from another (older/newer) format version
  'REPO_CORRUPT', // stored data that fails its checks
  'REPO_LOCKED',
  'LOCK_LOST', // this run's disk lock expired and was taken over: it published nothing
  'DISK_NOT_FOUND',
  'VERSION_NOT_FOUND',
  'CHUNK_MISSING',
  'CHUNK_CORRUPT',
  'KEY_REQUIRED', // an encrypted repository, and no passphrase was given (BLOCKREP_PASSWORD, --password-file, a terminal)
  'WRONG_PASSWORD', // no key file of the encrypted repository opens with the passphrase (or master key) given
  'KEY_NOT_FOUND', // no key file of that id in the repository
  'VERIFY_FAILED',
  'RESTORE_TARGET', // the restore target cannot be written as asked
  'NOT_FOUND', // a backend object that does not exist
  'EXISTS', // an exclusive write found the object already there
  'CHANGED', // a conditional replacement (If-Match) found the object changed or gone
  'NO_SPACE',
  'IO',
  'UNSUPPORTED_STORAGE', // the storage lacks a feature blockrep needs (an S3 server without conditional writes)
  // repository server (HTTP); src/server/http-status.ts maps every code to its HTTP status
  'UNAUTHORIZED', // no access token, or one the server does not know
  'FORBIDDEN', // the token lacks the right for this disk or operation
  'METHOD_NOT_ALLOWED', // an operation the object does not support (e.g. writing blockrep.json)
  'TOO_LARGE', // a request body over its limit
  'UNAVAILABLE', // the repository server cannot be reached or is overloaded (after retries)
  'TOKEN_NOT_FOUND', // no token of that name in the tokens file
  'TOKENS_LOCKED', // another `blockrep token` command is changing the tokens file
  'BAD_REQUEST', // a request (from a client, to the server) that is malformed
  // live VMs (QMP, guest agent, snapshot and commit)
  'QMP_UNAVAILABLE', // no QEMU monitor at the socket (missing, refused, not a socket)
  'QMP_BUSY', // the monitor is held by another client (QMP serves one at a time)
  'QMP_ERROR', // a QMP command failed, timed out, or its reply was not what QEMU documents
  'AGENT_UNAVAILABLE', // no guest agent answers (not running in the guest, or its channel is absent)
  'AGENT_ERROR', // a guest-agent command failed or timed out
  'FREEZE_FAILED', // the guest's filesystems could not be frozen; the guest was thawed, nothing changed
  'HOOK_FAILED', // a host hook before the freeze failed (hooks.onFailure: abort); nothing changed
  'SNAPSHOT_FAILED', // the snapshot transaction failed; the VM runs on its own images, unharmed
  'THAW_FAILED', // the guest could not be thawed: it may still be frozen (blockrep recover)
  'COMMIT_FAILED', // an overlay could not be committed back: the VM runs on it (blockrep recover)
  'RECOVERY_NEEDED', // an earlier run left the VM frozen or on a blockrep overlay (blockrep recover)
  'VM_LOCKED', // another blockrep process is working on the same VM
  // NBD (QEMU's NBD server for changed-block tracking, libvirt's pull-mode backup)
  'NBD_UNAVAILABLE', // no NBD server at the address (missing socket, connection refused)
  'NBD_ERROR', // the NBD server refused an option or a request, closed the connection, or did not answer in time
  'NBD_PROTOCOL', // the NBD server broke the protocol (malformed or hostile reply, closed mid-reply)
  'TRACKING_MISMATCH', // a block the changed-block tracker called clean had changed: nothing was published, the chain is dropped
  // libvirt domains (virsh)
  'LIBVIRT_UNAVAILABLE', // libvirt cannot be reached (daemon down, wrong --connect URI, virsh missing)
  'LIBVIRT_ERROR', // a virsh command failed or timed out for another reason (the message carries libvirt's)
  'DOMAIN_NOT_FOUND', // libvirt has no domain of that name
  'DOMAIN_NOT_RUNNING', // the domain is shut off (or crashed): there is no running VM to snapshot
  'BLOCK_JOB_ACTIVE', // a disk of the domain is in a block job that is not blockrep's (another tool is working on it)
  'INTERRUPTED', // stopped by a signal; nothing half-done was published
  'INTERNAL',
] as const;

export type ErrorCode = (typeof errorCodes)[number];

export class BlockrepError extends Error {
  readonly code: ErrorCode;
  /** Extra facts for `--json` output and logs; never secrets. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> | undefined }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BlockrepError';
    this.code = code;
    this.details = options?.details;
  }
}

export function isBlockrepError(err: unknown): err is BlockrepError {
  return err instanceof BlockrepError;
}

/** Node system errors (ENOENT, ENOSPC, ...) carry a string `code`. */
export function systemErrorCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/**
 * Turns an unexpected system error met while doing `what` into a BlockrepError with a code
 * that says what the user can do (ENOSPC → NO_SPACE), keeping the original as `cause`.
 */
export function wrapSystemError(err: unknown, what: string): BlockrepError {
  if (isBlockrepError(err)) return err;
  const sys = systemErrorCode(err);
  const text = err instanceof Error ? err.message : String(err);
  switch (sys) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new BlockrepError('NO_SPACE', `${what}: no space left on the device (${text}); free space and run again`, { cause: err });
    case 'ENOENT':
      return new BlockrepError('IO', `${what}: file not found (${text})`, { cause: err });
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new BlockrepError('IO', `${what}: permission denied (${text})`, { cause: err });
    default:
      return new BlockrepError('IO', `${what}: ${text}`, { cause: err });
  }
}

/**
 * Codes that stay what they are when the run was interrupted meanwhile: a full disk, and the
 * states that leave a VM needing attention, say more than "interrupted" does.
 */
const SURVIVES_INTERRUPT: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['INTERRUPTED', 'NO_SPACE', 'THAW_FAILED', 'COMMIT_FAILED', 'RECOVERY_NEEDED']);

/** Any thrown value as a BlockrepError: the one place unknown failures get their code. */
export function toBlockrepError(err: unknown, interrupted = false): BlockrepError {
  if (isBlockrepError(err)) return interrupted && !SURVIVES_INTERRUPT.has(err.code) ? new BlockrepError('INTERRUPTED', `interrupted: ${err.message}`, { cause: err }) : err;
  if (interrupted) return new BlockrepError('INTERRUPTED', 'interrupted', { cause: err });
  if (systemErrorCode(err) !== undefined) return wrapSystemError(err, 'unexpected system error');
  const message = err instanceof Error ? err.message : String(err);
  return new BlockrepError('INTERNAL', `internal error: ${message} (please report this; set BLOCKREP_DEBUG=1 for details)`, { cause: err });
}
