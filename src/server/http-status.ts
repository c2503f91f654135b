import type { ErrorCode } from '../shared/index.js';

/**
 * The one table from error codes to HTTP statuses. The response body always carries the code
 * itself ({code, message}), and the client turns it back into a BlockrepError with that code,
 * so exit codes are the same whether the repository is a directory or a server.
 */
const table = {
  BAD_REQUEST: 400,
  USAGE: 400,
  INVALID_DISK_ID: 400,
  INVALID_VERSION_ID: 400,
  INVALID_SIZE: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  REPO_NOT_FOUND: 404,
  DISK_NOT_FOUND: 404,
  VERSION_NOT_FOUND: 404,
  TOKEN_NOT_FOUND: 404,
  KEY_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  // A manifest that refers to a chunk the repository lacks: upload the chunk, then retry.
  CHUNK_MISSING: 409,
  REPO_LOCKED: 409,
  LOCK_LOST: 409,
  EXISTS: 412, // If-None-Match: * failed
  CHANGED: 412, // If-Match failed
  TOO_LARGE: 413,
  CHUNK_CORRUPT: 422, // the body is well-formed HTTP but its content fails its checks
  REPO_CORRUPT: 422,
  REPO_FORMAT: 422,
  INTERRUPTED: 503,
  UNAVAILABLE: 503,
  NO_SPACE: 507,
  // The rest: the server's own failure (the body still carries the code).
  CONFIG_INVALID: 500,
  PARTIAL_FAILURE: 500,
  RUN_FAILED: 500,
  IMAGE_NOT_FOUND: 500,
  IMAGE_UNREADABLE: 500,
  IMAGE_UNSUPPORTED: 500,
  IMAGE_CORRUPT: 500,
  BACKING_LOOP: 500,
  VERIFY_FAILED: 500,
  RESTORE_TARGET: 500,
  IO: 500,
  UNSUPPORTED_STORAGE: 500,
  QMP_UNAVAILABLE: 500,
  QMP_BUSY: 500,
  QMP_ERROR: 500,
  AGENT_UNAVAILABLE: 500,
  AGENT_ERROR: 500,
  NBD_UNAVAILABLE: 500,
  NBD_ERROR: 500,
  NBD_PROTOCOL: 500,
  TRACKING_MISMATCH: 500,
  FREEZE_FAILED: 500,
  HOOK_FAILED: 500,
  SNAPSHOT_FAILED: 500,
  THAW_FAILED: 500,
  COMMIT_FAILED: 500,
  RECOVERY_NEEDED: 500,
  VM_LOCKED: 500,
  LIBVIRT_UNAVAILABLE: 500,
  LIBVIRT_ERROR: 500,
  DOMAIN_NOT_FOUND: 500,
  DOMAIN_NOT_RUNNING: 500,
  BLOCK_JOB_ACTIVE: 500,
  TOKENS_LOCKED: 500,
  // Raised on the client only (the server never holds a key).
  KEY_REQUIRED: 500,
  WRONG_PASSWORD: 500,
  INTERNAL: 500,
} as const satisfies Record<ErrorCode, number>;

export function httpStatusFor(code: ErrorCode): number {
  return table[code];
}
