/**
 * app — the use cases: back up an image, a live VM or a libvirt domain, restore, verify, list, prune, gc, recover.
 * Each takes a Repository and options and returns a report; none prints or exits.
 * Invariants: a version is published last and whole; a live VM is thawed and back on its own
 * images on every path.
 */
export { backupImage, type DiskBackupReport, type TrackedRead } from './backup-image.js';
export { DEFAULT_FULL_SCAN_EVERY_MS, scanReasons, type ScanReason } from './scan-plan.js';
export { DOMAIN_BACKUP_METHODS, backupDomain, resolveDomainMethod, type DomainBackupMethod, type DomainBackupReport, type DomainPhase } from './backup-domain.js';
export { backupRunningDomains, type RunningDomainResult, type RunningDomainsReport } from './backup-running-domains.js';
export { backupVm, selectDisks, type LivePhase, type VmBackupReport } from './backup-vm.js';
export { describeHookCommand, runHostHook, HOOK_OUTPUT_BYTES, type HostHookCommand, type HostHookPhase, type HostHookResult, type HostHooks } from './host-hook.js';
export { DEFAULT_GC_GRACE_MS, collectGarbage, type GcReport } from './collect-garbage.js';
export { listVersions, type DiskSummary } from './list-versions.js';
export { type Progress } from './progress.js';
export { pruneVersions, type PruneReport } from './prune-versions.js';
export { recoverDomain, type RecoverDomainReport } from './recover-domain.js';
export { recoverVm, type RecoverVmReport } from './recover-vm.js';
export { restoreVersion, type RestoreReport } from './restore-version.js';
export { verifyEnvelopes } from './verify-envelopes.js';
export { verifyRepository, type VerifyReport } from './verify-repository.js';
