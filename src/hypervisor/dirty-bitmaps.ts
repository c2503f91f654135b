import { createHash } from 'node:crypto';
import { z } from 'zod';
import { BlockrepError } from '../shared/index.js';
import type { QmpClient } from './qmp-client.js';

/**
 * Dirty bitmaps of changed-block tracking, through QMP. blockrep's bitmaps are named
 * `blockrep-<chain>-g<generation>`: the chain is derived from the repository and the disk, so two
 * repositories backing up one VM never share (or remove) each other's bitmaps, and the
 * generation says which published version a bitmap counts writes since. Bitmaps of other tools
 * (libvirt checkpoints, virtnbdbackup) are never touched. Every action here is valid inside a
 * QMP `transaction` (QEMU's docs/interop/bitmaps.rst), so a generation can be started in the
 * same instant as the snapshot.
 */

const NAME_PATTERN = /^blockrep-([0-9a-f]{16})-g(\d{1,15})(-read)?$/;

/** A chain id: 16 hex digits of SHA-256 over the repository's id and the disk id. */
export function bitmapChainId(repositoryId: string, diskId: string): string {
  return createHash('sha256').update(`${repositoryId}\0${diskId}`).digest('hex').slice(0, 16);
}

export function bitmapName(chain: string, generation: number): string {
  if (!/^[0-9a-f]{16}$/.test(chain)) throw new BlockrepError('INTERNAL', `invalid bitmap chain id ${chain}`);
  if (!Number.isSafeInteger(generation) || generation < 0) throw new BlockrepError('INTERNAL', `invalid bitmap generation ${generation}`);
  return `blockrep-${chain}-g${generation}`;
}

/**
 * The disabled copy of generation `generation` that one run exports and reads
 * (`blockrep-<chain>-g<gen>-read`): transient, never a reference; `recover` removes leftovers.
 */
export function readCopyName(chain: string, generation: number): string {
  return `${bitmapName(chain, generation)}-read`;
}

/** The chain and generation of one of blockrep's bitmap names (and whether it is a read copy); undefined for anyone else's. */
export function parseBitmapName(name: string): { chain: string; generation: number; readCopy?: true } | undefined {
  const m = NAME_PATTERN.exec(name);
  if (!m) return undefined;
  const generation = Number(m[2]);
  if (!Number.isSafeInteger(generation)) return undefined;
  return m[3] !== undefined ? { chain: m[1]!, generation, readCopy: true } : { chain: m[1]!, generation };
}

// A job's own bitmaps (a block commit's, a mirror's) have no name: they are nobody's to touch.
const bitmapInfoSchema = z.object({
  name: z.string().optional(),
  granularity: z.number().int().positive(),
  count: z.number().int().nonnegative(),
  recording: z.boolean(),
  busy: z.boolean(),
  persistent: z.boolean(),
  inconsistent: z.boolean().optional(),
});
export type DirtyBitmap = z.infer<typeof bitmapInfoSchema> & { name: string };

function named(list: Array<z.infer<typeof bitmapInfoSchema>> | undefined): DirtyBitmap[] {
  return (list ?? []).filter((b): b is DirtyBitmap => b.name !== undefined);
}

const nodesWithBitmapsSchema = z.array(z.object({ 'node-name': z.string(), 'dirty-bitmaps': z.array(bitmapInfoSchema).optional() }).loose());

/** The dirty bitmaps of one block node (query-named-block-nodes). NOT_FOUND when there is no such node. */
export async function listDirtyBitmaps(qmp: QmpClient, node: string): Promise<DirtyBitmap[]> {
  const nodes = await qmp.execute('query-named-block-nodes', { flat: true }, nodesWithBitmapsSchema);
  const found = nodes.find((n) => n['node-name'] === node);
  if (!found) throw new BlockrepError('NOT_FOUND', `QEMU has no block node ${node}`);
  return named(found['dirty-bitmaps']);
}

/** Every dirty bitmap of every block node, with its node. */
export async function listAllDirtyBitmaps(qmp: QmpClient): Promise<Array<{ node: string; bitmap: DirtyBitmap }>> {
  const nodes = await qmp.execute('query-named-block-nodes', { flat: true }, nodesWithBitmapsSchema);
  return nodes.flatMap((n) => named(n['dirty-bitmaps']).map((bitmap) => ({ node: n['node-name'], bitmap })));
}

export interface BitmapRef {
  node: string;
  name: string;
}

/** Transaction actions (each also a command of the same name: `execute(action.type, action.data)`). */
export type BitmapAction = { type: string; data: Record<string, unknown> };

export function addBitmapAction(ref: BitmapRef, options: { persistent: boolean; granularity?: number; disabled?: boolean }): BitmapAction {
  return {
    type: 'block-dirty-bitmap-add',
    data: {
      node: ref.node,
      name: ref.name,
      persistent: options.persistent,
      ...(options.granularity !== undefined ? { granularity: options.granularity } : {}),
      ...(options.disabled ? { disabled: true } : {}),
    },
  };
}

export function removeBitmapAction(ref: BitmapRef): BitmapAction {
  return { type: 'block-dirty-bitmap-remove', data: { node: ref.node, name: ref.name } };
}

export function disableBitmapAction(ref: BitmapRef): BitmapAction {
  return { type: 'block-dirty-bitmap-disable', data: { node: ref.node, name: ref.name } };
}

export function enableBitmapAction(ref: BitmapRef): BitmapAction {
  return { type: 'block-dirty-bitmap-enable', data: { node: ref.node, name: ref.name } };
}

/** Merges `sources` (bitmap names on the same node) into `target`: the union of their dirty bits. */
export function mergeBitmapsAction(node: string, target: string, sources: string[]): BitmapAction {
  return { type: 'block-dirty-bitmap-merge', data: { node, target, bitmaps: sources } };
}

/** Runs actions as one transaction: all of them happen, or none. */
export async function runBitmapTransaction(qmp: QmpClient, actions: BitmapAction[]): Promise<void> {
  if (actions.length === 0) return;
  await qmp.execute('transaction', { actions }, z.object({}).loose());
}
