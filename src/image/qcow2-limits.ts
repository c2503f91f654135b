/**
 * The qcow2 constants that the reader, the writer and format detection share (QEMU's
 * docs/interop/qcow2.txt and its implementation limits): one home, so they cannot drift.
 */
export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const QCOW2_MAGIC_BYTES = Uint8Array.of(0x51, 0x46, 0x49, 0xfb);
export const QCOW2_MIN_CLUSTER_BITS = 9;
/** QEMU's implementation limit (2 MiB clusters); larger ones are valid qcow2 but refused. */
export const QCOW2_MAX_CLUSTER_BITS = 21;
export const QCOW2_MIN_CLUSTER_SIZE = 2 ** QCOW2_MIN_CLUSTER_BITS;
export const QCOW2_MAX_CLUSTER_SIZE = 2 ** QCOW2_MAX_CLUSTER_BITS;
/** QEMU refuses L1 tables over 32 MiB (QCOW_MAX_L1_SIZE); so do we, which also bounds what a header can make us allocate. */
export const QCOW2_MAX_L1_BYTES = 32 * 1024 * 1024;
/** L1/L2 entry bit 63: the cluster's refcount is exactly one. */
export const QCOW2_OFLAG_COPIED = 1n << 63n;
/** Host offsets live in bits 9–55 of L1/L2 entries. */
export const QCOW2_MAX_HOST_OFFSET = 2 ** 56;
