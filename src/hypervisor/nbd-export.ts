import { unlink } from 'node:fs/promises';
import { z } from 'zod';
import { BlockrepError, isBlockrepError, systemErrorCode } from '../shared/index.js';
import { qmpErrorClass, type QmpClient } from './qmp-client.js';

/**
 * A read-only NBD export of one block node by QEMU's own NBD server, on a unix socket of
 * blockrep's: how a frozen base is read together with its dirty bitmap
 * (`qemu:dirty-bitmap:NAME`) and its allocation (`base:allocation`). An exported bitmap is busy:
 * the export must be removed before the base is committed into (and before the bitmap changes).
 */

/** Export ids and names blockrep uses; `recover` removes leftovers by this prefix. */
export const EXPORT_ID_PREFIX = 'blockrep-export-';

export interface NbdExportRequest {
  /** The unix socket QEMU's NBD server listens on (a folder QEMU can write). */
  socketPath: string;
  node: string;
  /** The export's name, and the suffix of its id. */
  name: string;
  /** Bitmaps of `node` to export; each must be disabled (not recording). */
  bitmaps?: string[];
  timeoutMs?: number;
}

export interface NbdExport {
  socketPath: string;
  /** The export name an NBD client asks for (NBD_OPT_GO). */
  name: string;
  id: string;
  /** Removes the export (waiting for QEMU to say it is gone) and stops the NBD server. */
  close(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** Starts QEMU's NBD server on `socketPath` (none may be running) and exports `node` read-only. */
export async function startNbdExport(qmp: QmpClient, req: NbdExportRequest): Promise<NbdExport> {
  const id = `${EXPORT_ID_PREFIX}${req.name}`;
  const timeoutMs = req.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const ok = z.object({}).loose();
  await unlink(req.socketPath).catch((err: unknown) => {
    if (systemErrorCode(err) !== 'ENOENT') throw err;
  });
  try {
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: req.socketPath } } }, ok, { timeoutMs });
  } catch (err) {
    if (qmpErrorClass(err) === 'GenericError' && isBlockrepError(err)) {
      throw new BlockrepError('QMP_ERROR', `QEMU's NBD server could not start on ${req.socketPath} (is one already running? blockrep recover stops a leftover one): ${err.message}`, { cause: err });
    }
    throw err;
  }
  try {
    await qmp.execute(
      'block-export-add',
      { type: 'nbd', id, 'node-name': req.node, name: req.name, writable: false, ...(req.bitmaps && req.bitmaps.length > 0 ? { bitmaps: req.bitmaps } : {}) },
      ok,
      { timeoutMs },
    );
  } catch (err) {
    await stopNbdServer(qmp, timeoutMs).catch(() => undefined);
    throw err;
  }
  return {
    socketPath: req.socketPath,
    name: req.name,
    id,
    close: async () => {
      await removeExport(qmp, id, timeoutMs);
      await stopNbdServer(qmp, timeoutMs);
      await unlink(req.socketPath).catch(() => undefined);
    },
  };
}

const exportsSchema = z.array(z.object({ id: z.string(), 'node-name': z.string(), 'shutting-down': z.boolean() }).loose());

/** The block exports QEMU has now (query-block-exports). */
export async function listBlockExports(qmp: QmpClient): Promise<Array<{ id: string; node: string; shuttingDown: boolean }>> {
  const list = await qmp.execute('query-block-exports', undefined, exportsSchema);
  return list.map((e) => ({ id: e.id, node: e['node-name'], shuttingDown: e['shutting-down'] }));
}

/** Removes one export and waits until QEMU has released it (its node and bitmaps are free then). */
export async function removeExport(qmp: QmpClient, id: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
  const deleted = qmp.waitForEvent('BLOCK_EXPORT_DELETED', (data) => data.id === id, { timeoutMs });
  try {
    // mode "hard": a client still connected (a killed blockrep's) must not keep the export alive.
    await qmp.execute('block-export-del', { id, mode: 'hard' }, z.object({}).loose(), { timeoutMs });
  } catch (err) {
    deleted.cancel();
    // Already gone (e.g. removed by an earlier attempt): nothing to wait for.
    if (qmpErrorClass(err) === 'GenericError' && !(await listBlockExports(qmp)).some((e) => e.id === id)) return;
    throw err;
  }
  await deleted.promise;
}

/** Stops QEMU's NBD server; a server that is not running is fine. */
export async function stopNbdServer(qmp: QmpClient, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
  try {
    await qmp.execute('nbd-server-stop', undefined, z.object({}).loose(), { timeoutMs });
  } catch (err) {
    if (qmpErrorClass(err) === 'GenericError') return;
    throw err;
  }
}
