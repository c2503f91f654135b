import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import {
  NBD_REPLY_FLAG_DONE,
  decodeRequest,
  encodeChunk,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContextReply,
  encodeOffsetDataPayload,
  encodeOptionReply,
  encodeServerGreeting,
  nbdHandshakeFlag,
  nbdOption,
  nbdOptionReply,
  nbdReplyType,
  nbdTransmissionFlag,
  type NbdRequest,
} from '../../../src/nbd/index.js';

/**
 * A scripted NBD server for the client's hostile-input tests: it speaks a correct handshake
 * by default, and every step can be replaced by a script that writes whatever bytes the test
 * wants (a wrong magic, a reply for a request never sent, a chunk outside the range...).
 * Correctness is proved against qemu-nbd; this only feeds the client what QEMU never would.
 */

export interface FakeExport {
  exportBytes: number;
  transmissionFlags: number;
  blockSize?: { minimum: number; preferred: number; maximum: number };
}

export interface FakeScript {
  /** Replaces the 18-byte greeting. */
  greeting?: Buffer;
  /** Answers an option; return false to get the default answer. */
  onOption?: (option: number, data: Buffer, sock: Socket) => boolean;
  /** Answers a request (the default: data of 0xab bytes in one DONE chunk). */
  onRequest?: (request: NbdRequest, sock: Socket, state: { requests: NbdRequest[] }) => void;
  export?: Partial<FakeExport>;
  /** Refuse NBD_OPT_STRUCTURED_REPLY. */
  refuseStructured?: boolean;
}

export interface FakeServer {
  path: string;
  requests: NbdRequest[];
  options: number[];
  /** NBD_CMD_DISC requests received. */
  disconnects: () => number;
  stop(): Promise<void>;
}

let counter = 0;

export async function startFakeServer(dir: string, script: FakeScript = {}): Promise<FakeServer> {
  const path = join(dir, `fake-${counter++}.sock`);
  const requests: NbdRequest[] = [];
  const options: number[] = [];
  const sockets = new Set<Socket>();
  let disconnects = 0;
  const exp: FakeExport = { exportBytes: 1024 * 1024, transmissionFlags: nbdTransmissionFlag.hasFlags | nbdTransmissionFlag.readOnly, ...script.export };
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    sock.write(script.greeting ?? encodeServerGreeting(nbdHandshakeFlag.fixedNewstyle | nbdHandshakeFlag.noZeroes));
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'requests' = 'flags';
    const contexts = new Map<string, number>();
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const option = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          const data = Buffer.from(buf.subarray(16, 16 + len));
          buf = buf.subarray(16 + len);
          options.push(option);
          if (script.onOption?.(option, data, sock) === true) {
            // A scripted NBD_OPT_GO never enters transmission in these tests; EXPORT_NAME always does.
            if (option === nbdOption.exportName) phase = 'requests';
            continue;
          }
          if (option === nbdOption.structuredReply) {
            sock.write(encodeOptionReply(option, script.refuseStructured === true ? nbdOptionReply.errUnsup : nbdOptionReply.ack));
          } else if (option === nbdOption.setMetaContext || option === nbdOption.listMetaContext) {
            // Grant every query, ids from 1.
            const nameLen = data.readUInt32BE(0);
            let at = 4 + nameLen;
            const count = data.readUInt32BE(at);
            at += 4;
            for (let i = 0; i < count; i++) {
              const q = data.readUInt32BE(at);
              const name = data.subarray(at + 4, at + 4 + q).toString();
              at += 4 + q;
              const id = option === nbdOption.setMetaContext ? i + 1 : 0;
              if (option === nbdOption.setMetaContext) contexts.set(name, id);
              sock.write(encodeOptionReply(option, nbdOptionReply.metaContext, encodeMetaContextReply(id, name)));
            }
            sock.write(encodeOptionReply(option, nbdOptionReply.ack));
          } else if (option === nbdOption.go) {
            sock.write(encodeOptionReply(option, nbdOptionReply.info, encodeInfoExport(exp.exportBytes, exp.transmissionFlags)));
            const bs = exp.blockSize ?? { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
            sock.write(encodeOptionReply(option, nbdOptionReply.info, encodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum)));
            sock.write(encodeOptionReply(option, nbdOptionReply.ack));
            phase = 'requests';
          } else if (option === nbdOption.abort) {
            sock.end(encodeOptionReply(option, nbdOptionReply.ack));
            return;
          } else {
            sock.write(encodeOptionReply(option, nbdOptionReply.errUnsup));
          }
        } else {
          if (buf.length < 28) return;
          const request = decodeRequest(Buffer.from(buf.subarray(0, 28)));
          buf = buf.subarray(28);
          if (request.type === 2) {
            disconnects++;
            sock.end();
            return;
          }
          requests.push(request);
          if (script.onRequest) script.onRequest(request, sock, { requests });
          else sock.write(encodeChunk(NBD_REPLY_FLAG_DONE, nbdReplyType.offsetData, request.cookie, encodeOffsetDataPayload(request.offset, Buffer.alloc(request.length, 0xab))));
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    requests,
    options,
    disconnects: () => disconnects,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
