import { BlockrepError } from './blockrep-error.js';

/**
 * Disk ids (docs/reference/repository-format.md): letters, digits, `.`, `_`, `-`, with `/` between segments; no empty,
 * `.` or `..` segment; at most 200 characters.
 */
export const MAX_DISK_ID_LENGTH = 200;
/**
 * A disk id is one path component in a repository, "/" escaped as "%2F" (3 bytes): the folder
 * `disks/<id>`, the lock `locks/<id>.lock`, and gc's aside name for it `.tmp-gc-<id>.lock-<16 hex>`
 * (30 bytes more). 224 keeps the longest under the 255 bytes a file name may have.
 */
export const MAX_DISK_ID_COMPONENT_BYTES = 224;
const SEGMENT = /^[A-Za-z0-9._-]+$/;
const TEMP_LIKE = '.tmp-';

export function diskIdProblem(id: string): string | undefined {
  if (id.length === 0) return 'it is empty';
  if (id.length > MAX_DISK_ID_LENGTH) return `it is longer than ${MAX_DISK_ID_LENGTH} characters`;
  for (const segment of id.split('/')) {
    if (segment === '') return 'it has an empty segment (leading, trailing or double "/")';
    if (segment === '.' || segment === '..') return `it has a "${segment}" segment`;
    if (!SEGMENT.test(segment)) return 'it may contain only letters, digits, ".", "_", "-" and "/" between segments';
  }
  const componentBytes = escapeComponent(id).length;
  if (componentBytes > MAX_DISK_ID_COMPONENT_BYTES) {
    return `stored as a file name it takes ${componentBytes} bytes (each "/" takes 3), more than ${MAX_DISK_ID_COMPONENT_BYTES}: use fewer or shorter segments`;
  }
  return undefined;
}

/** A VM name is the first segment of its disks' ids: one segment, no "/". */
export function vmNameProblem(name: string): string | undefined {
  if (name.includes('/')) return 'it may not contain "/"';
  return diskIdProblem(name);
}

export function assertDiskId(id: string): string {
  const problem = diskIdProblem(id);
  if (problem !== undefined) {
    throw new BlockrepError('INVALID_DISK_ID', `invalid disk id ${JSON.stringify(id.slice(0, 240))}: ${problem}`);
  }
  return id;
}

/**
 * A disk id as one path component: "/" is escaped, and so is the "." of a leading ".tmp-", which
 * would make the folder or lock look like a storage temporary file (never listed, swept by gc).
 */
export function diskIdToPathComponent(id: string): string {
  return escapeComponent(assertDiskId(id));
}

function escapeComponent(id: string): string {
  const component = id.replaceAll('/', '%2F');
  return component.startsWith(TEMP_LIKE) ? `%2E${component.slice(1)}` : component;
}

export function diskIdFromPathComponent(component: string): string | undefined {
  const unescaped = component.startsWith('%2E') ? `.${component.slice(3)}` : component;
  if (component.startsWith('%2E') && !unescaped.startsWith(TEMP_LIKE)) return undefined;
  const id = unescaped.replaceAll('%2F', '/');
  return diskIdProblem(id) === undefined ? id : undefined;
}

/** Default disk id of an image file: its base name without the extension, made valid. */
export function defaultDiskIdForImage(path: string): string {
  const base = path.split('/').filter(Boolean).pop() ?? '';
  const stem = base.includes('.') && !base.startsWith('.') ? base.slice(0, base.lastIndexOf('.')) : base;
  const cleaned = stem.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+$/, '_');
  return cleaned === '' ? 'disk' : cleaned.slice(0, MAX_DISK_ID_LENGTH);
}
