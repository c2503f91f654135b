import type { Socket } from 'node:net';

/**
 * Reads exact byte counts from a socket, one read at a time, for a sequential protocol parser.
 * What it buffers is bounded: past `highWaterBytes` the socket is paused until the parser
 * catches up (only a read that itself needs more than that lets the buffer grow to its size).
 * Large payloads go straight into the caller's buffer (readInto). A read that cannot be met
 * because the socket ended or failed rejects with SocketClosedError; the caller names it.
 */

export class SocketClosedError extends Error {
  constructor(readonly reason: string, options?: { cause?: unknown }) {
    super(reason, options);
    this.name = 'SocketClosedError';
  }
}

type Waiter =
  | { kind: 'bytes'; bytes: number; resolve: (buf: Buffer) => void; reject: (err: Error) => void }
  | { kind: 'into'; target: Uint8Array; at: number; end: number; resolve: () => void; reject: (err: Error) => void };

export const DEFAULT_READER_HIGH_WATER_BYTES = 4 * 1024 * 1024;

export class SocketReader {
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private headOffset = 0;
  private queued = 0;
  private waiter: Waiter | undefined;
  private ended: SocketClosedError | undefined;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    private readonly highWaterBytes = DEFAULT_READER_HIGH_WATER_BYTES,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.queued += chunk.byteLength;
      this.pump();
    });
    socket.on('end', () => this.end(new SocketClosedError('the peer closed the connection')));
    socket.on('close', () => this.end(new SocketClosedError('the connection was closed')));
    socket.on('error', (err) => this.end(new SocketClosedError(`the connection failed: ${err.message}`, { cause: err })));
  }

  /** Bytes received and not yet read (for tests of the bound). */
  get bufferedBytes(): number {
    return this.queued;
  }

  /** Exactly `bytes` bytes. */
  read(bytes: number): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      this.wait({ kind: 'bytes', bytes, resolve, reject });
    });
  }

  /** Fills target[start, end) from the stream. */
  readInto(target: Uint8Array, start = 0, end = target.byteLength): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.wait({ kind: 'into', target, at: start, end, resolve, reject });
    });
  }

  /** Reads and drops `bytes` bytes (a payload the parser does not need), in bounded pieces. */
  async skip(bytes: number): Promise<void> {
    const scratch = Buffer.allocUnsafe(Math.min(bytes, 64 * 1024));
    for (let left = bytes; left > 0; left -= scratch.byteLength) await this.readInto(scratch, 0, Math.min(left, scratch.byteLength));
  }

  private wait(waiter: Waiter): void {
    if (this.waiter) {
      waiter.reject(new Error('SocketReader: one read at a time'));
      return;
    }
    this.waiter = waiter;
    this.pump();
  }

  private end(reason: SocketClosedError): void {
    if (this.ended) return;
    this.ended = reason;
    this.pump();
  }

  private pump(): void {
    const waiter = this.waiter;
    if (waiter?.kind === 'bytes' && this.queued >= waiter.bytes) {
      this.waiter = undefined;
      waiter.resolve(this.take(waiter.bytes));
    } else if (waiter?.kind === 'into') {
      while (waiter.at < waiter.end && this.chunks.length > 0) {
        const head = this.chunks[0]!;
        const n = Math.min(head.byteLength - this.headOffset, waiter.end - waiter.at);
        // Buffer#copy is a plain memcpy; TypedArray#set from a Buffer was 4x slower here.
        head.copy(waiter.target, waiter.at, this.headOffset, this.headOffset + n);
        waiter.at += n;
        this.consume(n);
      }
      if (waiter.at === waiter.end) {
        this.waiter = undefined;
        waiter.resolve();
      }
    }
    if (this.waiter && this.ended) {
      const pending = this.waiter;
      this.waiter = undefined;
      pending.reject(this.ended);
    }
    this.flowControl();
  }

  private flowControl(): void {
    const needsMore = this.waiter?.kind === 'bytes' && this.waiter.bytes > this.queued;
    const shouldPause = this.queued >= this.highWaterBytes && !needsMore;
    if (shouldPause && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!shouldPause && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private take(bytes: number): Buffer {
    const head = this.chunks[0];
    if (head && head.byteLength - this.headOffset >= bytes) {
      const out = head.subarray(this.headOffset, this.headOffset + bytes);
      this.consume(bytes);
      return out;
    }
    const out = Buffer.allocUnsafe(bytes);
    let at = 0;
    while (at < bytes) {
      const chunk = this.chunks[0]!;
      const n = Math.min(chunk.byteLength - this.headOffset, bytes - at);
      chunk.copy(out, at, this.headOffset, this.headOffset + n);
      at += n;
      this.consume(n);
    }
    return out;
  }

  private consume(bytes: number): void {
    this.headOffset += bytes;
    this.queued -= bytes;
    const head = this.chunks[0];
    if (head && this.headOffset === head.byteLength) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}
