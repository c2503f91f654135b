/**
 * hypervisor — the only code that speaks QEMU's protocols: QMP, the guest agent, the live
 * snapshot (freeze, transaction, thaw), block commit, disk discovery and recovery.
 * Invariants: thaw on every path; an overlay is deleted only once the VM is back on its base.
 */
export { commitOverlay, queryJobs, type CommitResult } from './block-commit.js';
export {
  addBitmapAction,
  bitmapChainId,
  bitmapName,
  listAllDirtyBitmaps,
  listDirtyBitmaps,
  mergeBitmapsAction,
  parseBitmapName,
  readCopyName,
  removeBitmapAction,
  runBitmapTransaction,
  type BitmapAction,
  type DirtyBitmap,
} from './dirty-bitmaps.js';
export { EXPORT_ID_PREFIX, listBlockExports, removeExport, startNbdExport, stopNbdServer, type NbdExport } from './nbd-export.js';
export { openGuestAgent } from './guest-agent-channel.js';
export { type GuestAgentClient } from './guest-agent-client.js';
export { planOverlays, takeLiveSnapshot, type LiveSnapshot, type OverlayTarget } from './live-snapshot.js';
export { OVERLAY_FILE_SUFFIX, isCommitJob, isOverlayFile, isOverlayNode, nbdSocketFor, overlayFileFor } from './overlay-names.js';
export { QmpClient } from './qmp-client.js';
export { listVmDisks, type VmDisk } from './vm-disks.js';
export { VmLock } from './vm-lock.js';
export { recoverVmState, type RecoveryReport } from './vm-recovery.js';
