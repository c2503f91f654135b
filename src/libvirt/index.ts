/**
 * libvirt — the only code that speaks to libvirt: the virsh runner (argv arrays, LC_ALL=C,
 * timeouts, errors as our codes), the domain XML, and the snapshot method (atomic disk-only
 * external snapshot, shallow active commit with pivot, recovery) through libvirt's own verbs.
 * Invariants: never a commit without --shallow; an overlay is deleted only once both the live
 * and the persistent definition are back on the original image.
 */
export { domainLockPath } from './domain-lock.js';
export { recoverDomainState, type DomainRecoveryReport } from './domain-recovery.js';
export { commitDomainDisk, planDomainOverlays, removeUnusedOverlays, snapshotCandidates, takeDomainSnapshot, type DomainOverlayTarget, type DomainSnapshot } from './domain-snapshot.js';
export { parseDomainXml, type BackingLayer, type DomainDefinition, type DomainDisk } from './domain-xml.js';
export { LibvirtDomain, type BlockJobInfo } from './libvirt-domain.js';
export { Virsh, virshError, type VirshOptions } from './virsh.js';
