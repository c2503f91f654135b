import { z } from 'zod';
import type { QmpClient } from './qmp-client.js';

/**
 * What disks a running VM has, as QEMU sees them: `query-block` for the disks and their active
 * layer, `query-named-block-nodes` for every node, and the block graph for backing links.
 * Both styles of definition are handled: `-drive id=D` disks are addressed with device "D";
 * `-blockdev … node-name=N` disks have device "" and are addressed by node name and named by
 * their guest device's id (qdev).
 */

const imageInfoSchema: z.ZodType<ImageInfo> = z.lazy(() =>
  z.object({
    filename: z.string(),
    format: z.string(),
    'virtual-size': z.number(),
    'backing-filename': z.string().optional(),
    'full-backing-filename': z.string().optional(),
    'backing-image': imageInfoSchema.optional(),
  }),
);
interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'backing-filename'?: string | undefined;
  'full-backing-filename'?: string | undefined;
  'backing-image'?: ImageInfo | undefined;
}

export const queryBlockSchema = z.array(
  z.object({
    device: z.string(),
    qdev: z.string().optional(),
    inserted: z
      .object({
        'node-name': z.string(),
        file: z.string(),
        ro: z.boolean(),
        drv: z.string(),
        backing_file: z.string().optional(),
        backing_file_depth: z.number().int(),
        image: imageInfoSchema,
      })
      .optional(),
  }),
);
export type QueryBlock = z.infer<typeof queryBlockSchema>;

export const namedNodesSchema = z.array(
  z.object({
    'node-name': z.string(),
    file: z.string(),
    drv: z.string(),
    ro: z.boolean(),
    backing_file: z.string().optional(),
  }),
);
export type NamedNode = z.infer<typeof namedNodesSchema>[number];

const blockGraphSchema = z.object({
  nodes: z.array(z.object({ id: z.number(), type: z.string(), name: z.string() })),
  edges: z.array(z.object({ parent: z.number(), child: z.number(), name: z.string() })),
});

export interface VmDisk {
  /** The disk's name in blockrep's disk ids: the drive id, else the guest device id, else the node name. */
  id: string;
  /** The -drive id QMP addresses the disk by; undefined for a -blockdev disk. */
  device: string | undefined;
  /** The guest device's QOM path. */
  qdev: string | undefined;
  /** The active (top) node. */
  node: string;
  /** The active layer's file. */
  file: string;
  /** QEMU's driver of the active node: qcow2, raw, file (a bare file), host_device, ... */
  driver: string;
  /** The image format blockrep reads it as, when it can. */
  format: 'raw' | 'qcow2' | undefined;
  backingDepth: number;
  virtualSize: number;
  readOnly: boolean;
  /** The files of the whole chain, top first, as QEMU has them open. */
  chain: string[];
}

export interface SkippedDisk {
  id: string;
  reason: string;
}

/** The device id in a qdev path: /machine/peripheral/<id>/virtio-backend → <id>. */
export function deviceIdOfQdev(qdev: string | undefined): string | undefined {
  if (!qdev) return undefined;
  const m = /^\/machine\/peripheral\/([^/]+)/.exec(qdev);
  return m?.[1];
}

export function diskFormatOfDriver(driver: string): 'raw' | 'qcow2' | undefined {
  if (driver === 'qcow2') return 'qcow2';
  if (driver === 'raw' || driver === 'file' || driver === 'host_device') return 'raw';
  return undefined;
}

/** Every disk that has a medium; read-only disks and empty drives are returned as skipped. */
export async function listVmDisks(qmp: QmpClient): Promise<{ disks: VmDisk[]; skipped: SkippedDisk[] }> {
  const blocks = await qmp.execute('query-block', undefined, queryBlockSchema);
  const disks: VmDisk[] = [];
  const skipped: SkippedDisk[] = [];
  for (const b of blocks) {
    const ins = b.inserted;
    const id = b.device !== '' ? b.device : (deviceIdOfQdev(b.qdev) ?? ins?.['node-name'] ?? b.qdev ?? '?');
    if (!ins) {
      skipped.push({ id, reason: 'no medium' });
      continue;
    }
    const chain: string[] = [];
    for (let img: ImageInfo | undefined = ins.image; img; img = img['backing-image']) chain.push(img.filename);
    const disk: VmDisk = {
      id,
      device: b.device !== '' ? b.device : undefined,
      qdev: b.qdev,
      node: ins['node-name'],
      file: ins.file,
      driver: ins.drv,
      format: diskFormatOfDriver(ins.drv),
      backingDepth: ins.backing_file_depth,
      virtualSize: ins.image['virtual-size'],
      readOnly: ins.ro,
      chain,
    };
    if (ins.ro) {
      skipped.push({ id, reason: 'read-only' });
      continue;
    }
    disks.push(disk);
  }
  return { disks, skipped };
}

export async function listNamedNodes(qmp: QmpClient): Promise<NamedNode[]> {
  return qmp.execute('query-named-block-nodes', { flat: true }, namedNodesSchema);
}

/**
 * The node that is `node`'s backing child. From the block graph when QEMU offers it
 * (x-debug-query-block-graph); else the format node whose file is `node`'s backing file.
 */
export async function backingNodeOf(qmp: QmpClient, node: string): Promise<string | undefined> {
  try {
    const graph = await qmp.execute('x-debug-query-block-graph', undefined, blockGraphSchema);
    const self = graph.nodes.find((n) => n.type === 'block-driver' && n.name === node);
    if (self) {
      const edge = graph.edges.find((e) => e.parent === self.id && e.name === 'backing');
      if (!edge) return undefined;
      return graph.nodes.find((n) => n.id === edge.child)?.name;
    }
  } catch {
    // an older or newer QEMU without the debug command: fall back on file names
  }
  const nodes = await listNamedNodes(qmp);
  const self = nodes.find((n) => n['node-name'] === node);
  if (!self?.backing_file) return undefined;
  const candidates = nodes.filter((n) => n.file === self.backing_file && n['node-name'] !== node);
  // The format node over the file, if there is one; else the protocol node itself.
  return (candidates.find((n) => n.drv !== 'file' && n.drv !== 'host_device') ?? candidates[0])?.['node-name'];
}
