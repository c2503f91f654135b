/**
 * libvirt — the only code that speaks to libvirt: the virsh runner (argv arrays, LC_ALL=C,
 * timeouts, errors as our codes), the domain XML, the snapshot method (atomic disk-only
 * external snapshot, shallow active commit with pivot, recovery) and the backup-api method
 * (pull-mode backup jobs, checkpoints, dirty extents over NBD) through libvirt's own verbs.
 * Invariants: never a commit without --shallow; an overlay is deleted only once both the live
 * and the persistent definition are back on the original image; only blockrep's checkpoints
 * (named so) are ever deleted.
 */
export {
  backupWorkDir,
  backupXml,
  beginBackup,
  beginBackupAndThaw,
  domainJob,
  endBackupJob,
  isBlockrepBackupPath,
  parseBackupXml,
  prepareBackupWorkDir,
  readBackupJob,
  removeBackupWorkDir,
  type BackupJobDisk,
  type BackupJobView,
} from './domain-backup-job.js';
export {
  checkpointChain,
  checkpointPrefix,
  checkpointXml,
  deleteCheckpoint,
  isBlockrepCheckpoint,
  listCheckpoints,
  newCheckpointName,
  parseCheckpointXml,
  readCheckpoint,
  type CheckpointInfo,
} from './domain-checkpoints.js';
export { blockrepStateDir, domainLockPath } from './domain-lock.js';
export { recoverDomainState, type DomainRecoveryReport } from './domain-recovery.js';
export { commitDomainDisk, planDomainOverlays, removeUnusedOverlays, snapshotCandidates, takeDomainSnapshot, type DomainOverlayTarget, type DomainSnapshot } from './domain-snapshot.js';
export { parseDomainXml, type BackingLayer, type DomainDefinition, type DomainDisk } from './domain-xml.js';
export { LibvirtDomain, type BlockJobInfo } from './libvirt-domain.js';
export { BACKUP_API_MIN_VERSION, libvirtVersion, parseVirshVersion, versionAtLeast } from './libvirt-version.js';
export { runningDomains } from './running-domains.js';
export { Virsh, virshError, type VirshOptions } from './virsh.js';
