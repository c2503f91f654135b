import type { ErrorCode } from '../shared/index.js';

/**
 * The one table from error codes to exit codes (documented in `blockrep --help`).
 * 0 success, 1 failure, 2 usage; the others let scripts react without parsing messages.
 */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_NOT_FOUND = 3;
export const EXIT_DAMAGED = 4;
export const EXIT_LOCKED = 5;
export const EXIT_IMAGE_REFUSED = 6;
export const EXIT_NO_SPACE = 7;
export const EXIT_VM_UNREACHABLE = 8;
export const EXIT_SNAPSHOT_FAILED = 9;
export const EXIT_VM_NEEDS_RECOVERY = 10;
export const EXIT_ACCESS_DENIED = 11;
export const EXIT_UNAVAILABLE = 12;
/** blockrep run: at least one VM was backed up and at least one failed. */
export const EXIT_PARTIAL_FAILURE = 13;
/** An encrypted repository: the passphrase given opens none of its keys. */
export const EXIT_WRONG_PASSWORD = 14;
/** An encrypted repository, and no passphrase was given. */
export const EXIT_KEY_REQUIRED = 15;
export const EXIT_INTERRUPTED = 130;

const table = {
  USAGE: EXIT_USAGE,
  CONFIG_INVALID: EXIT_USAGE,
  PARTIAL_FAILURE: EXIT_PARTIAL_FAILURE,
  RUN_FAILED: EXIT_FAILURE,
  INVALID_DISK_ID: EXIT_USAGE,
  INVALID_VERSION_ID: EXIT_USAGE,
  INVALID_SIZE: EXIT_USAGE,
  REPO_NOT_FOUND: EXIT_NOT_FOUND,
  DISK_NOT_FOUND: EXIT_NOT_FOUND,
  VERSION_NOT_FOUND: EXIT_NOT_FOUND,
  IMAGE_NOT_FOUND: EXIT_NOT_FOUND,
  VERIFY_FAILED: EXIT_DAMAGED,
  CHUNK_CORRUPT: EXIT_DAMAGED,
  WRONG_PASSWORD: EXIT_WRONG_PASSWORD,
  KEY_REQUIRED: EXIT_KEY_REQUIRED,
  KEY_NOT_FOUND: EXIT_NOT_FOUND,
  TRACKING_MISMATCH: EXIT_DAMAGED,
  CHUNK_MISSING: EXIT_DAMAGED,
  REPO_CORRUPT: EXIT_DAMAGED,
  REPO_LOCKED: EXIT_LOCKED,
  LOCK_LOST: EXIT_LOCKED,
  VM_LOCKED: EXIT_LOCKED,
  TOKENS_LOCKED: EXIT_LOCKED,
  IMAGE_UNSUPPORTED: EXIT_IMAGE_REFUSED,
  IMAGE_CORRUPT: EXIT_IMAGE_REFUSED,
  IMAGE_UNREADABLE: EXIT_IMAGE_REFUSED,
  BACKING_LOOP: EXIT_IMAGE_REFUSED,
  NO_SPACE: EXIT_NO_SPACE,
  TOKEN_NOT_FOUND: EXIT_NOT_FOUND,
  UNAUTHORIZED: EXIT_ACCESS_DENIED,
  FORBIDDEN: EXIT_ACCESS_DENIED,
  UNAVAILABLE: EXIT_UNAVAILABLE,
  QMP_UNAVAILABLE: EXIT_VM_UNREACHABLE,
  QMP_BUSY: EXIT_VM_UNREACHABLE,
  AGENT_UNAVAILABLE: EXIT_VM_UNREACHABLE,
  NBD_UNAVAILABLE: EXIT_VM_UNREACHABLE,
  LIBVIRT_UNAVAILABLE: EXIT_VM_UNREACHABLE,
  DOMAIN_NOT_RUNNING: EXIT_VM_UNREACHABLE,
  DOMAIN_NOT_FOUND: EXIT_NOT_FOUND,
  BLOCK_JOB_ACTIVE: EXIT_LOCKED,
  FREEZE_FAILED: EXIT_SNAPSHOT_FAILED,
  HOOK_FAILED: EXIT_SNAPSHOT_FAILED,
  SNAPSHOT_FAILED: EXIT_SNAPSHOT_FAILED,
  THAW_FAILED: EXIT_VM_NEEDS_RECOVERY,
  COMMIT_FAILED: EXIT_VM_NEEDS_RECOVERY,
  RECOVERY_NEEDED: EXIT_VM_NEEDS_RECOVERY,
  INTERRUPTED: EXIT_INTERRUPTED,
  // The rest: a plain failure (the message and the code say which).
  REPO_FORMAT: EXIT_FAILURE,
  RESTORE_TARGET: EXIT_FAILURE,
  NOT_FOUND: EXIT_FAILURE,
  EXISTS: EXIT_FAILURE,
  CHANGED: EXIT_FAILURE,
  IO: EXIT_FAILURE,
  UNSUPPORTED_STORAGE: EXIT_FAILURE,
  METHOD_NOT_ALLOWED: EXIT_FAILURE,
  TOO_LARGE: EXIT_FAILURE,
  BAD_REQUEST: EXIT_FAILURE,
  QMP_ERROR: EXIT_FAILURE,
  AGENT_ERROR: EXIT_FAILURE,
  NBD_ERROR: EXIT_FAILURE,
  NBD_PROTOCOL: EXIT_FAILURE,
  LIBVIRT_ERROR: EXIT_FAILURE,
  INTERNAL: EXIT_FAILURE,
} as const satisfies Record<ErrorCode, number>;

export function exitCodeFor(code: ErrorCode): number {
  return table[code];
}

export const exitCodeHelp = `
Exit codes:
  0    success
  1    failure (the message says what went wrong); blockrep run: no VM could be backed up
  2    usage error: bad arguments, disk id, version id or size, or a mistake in a job
       configuration (the message names the file, line and path)
  3    not found: repository, disk, version, image, libvirt domain or key file
  4    damage: verify found damaged or missing data, or stored data failed its checks
  5    locked: another blockrep process is writing the same disk or working on the same VM,
       or took over this run's disk lock after it expired (nothing was published), a
       disk of the libvirt domain is in another tool's block job, or another blockrep
       token command kept the tokens file locked
  6    image refused: corrupt, truncated, encrypted, unsupported feature, backing loop
  7    no space left on the device
  8    VM unreachable: no QEMU monitor at the socket, the monitor is busy with another
       client, libvirt cannot be reached, the domain is not running, no NBD server at
       the disk's export address, or (with --require-quiesce) no guest agent answers
  9    snapshot not taken: a host hook, the freeze or the snapshot failed; the VM runs on its
       own images, unharmed
  10   the VM needs recovery: it may be frozen or running on a blockrep overlay; the message
       says which; run blockrep recover --qmp SOCKET [--qga SOCKET] (or --domain NAME)
  11   access denied by the repository server: no token, an unknown token, or one without
       the right for this disk or operation; or by S3: no, wrong or expired credentials
  12   the repository server or S3 endpoint cannot be reached or stays unavailable (after retries)
  13   blockrep run: some VMs were backed up and some failed (the report names each failure)
  14   wrong passphrase: none of the encrypted repository's keys opens with it
  15   the repository is encrypted and no passphrase was given ($BLOCKREP_PASSWORD,
       --password-file FILE, or a terminal)
  130  interrupted by a signal (nothing half-done was published)`;
