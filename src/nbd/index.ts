/**
 * nbd — the NBD protocol (the NBD project's doc/proto.md): a client that reads an export and
 * queries its metadata contexts (`base:allocation`, `qemu:dirty-bitmap:NAME`), for QEMU's NBD
 * server (changed-block tracking) and libvirt's pull-mode backup.
 *
 * Invariants: the wire format (nbd-constants, nbd-handshake-wire, nbd-transmission-wire) is
 * pure functions over buffers, both directions, so a server can join this folder and share it;
 * its decoders throw only NBD_PROTOCOL BlockrepErrors. The client checks every reply against
 * the request it answers and drops a server that breaks the protocol (NBD_PROTOCOL); buffers
 * are bounded (reads go into the caller's buffer, requests in flight are capped); every wait
 * ends by the reply, a timeout, or the socket closing.
 *
 * Offers: NbdClient (connect, listMetaContexts, read, blockStatus, extents, close), the
 * addresses (parseNbdAddress), the protocol's constants and wire codecs.
 */
export { readDirtyExtents } from './dirty-extents.js';
export { NBD_DEFAULT_PORT, formatNbdAddress, parseNbdAddress, type NbdAddress, type ParsedNbdAddress } from './nbd-address.js';
export {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_BLOCK_STATUS_REQUEST_BYTES,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_REQUEST_TIMEOUT_MS,
  NbdClient,
  type NbdConnectOptions,
  type NbdExtent,
} from './nbd-client.js';
export * from './nbd-constants.js';
export type { NbdExportInfo } from './nbd-handshake.js';
export * from './nbd-handshake-wire.js';
export * from './nbd-transmission-wire.js';
