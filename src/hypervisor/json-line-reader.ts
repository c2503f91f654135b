/**
 * Splits a byte stream into lines (LF; a CR before it is dropped) with a hard limit on what it
 * buffers. QMP and the guest agent both speak one JSON object per line; the agent's resync
 * also puts a raw 0xFF byte in the stream, which is why this works on bytes, not strings.
 */
export class JsonLineReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  /** @param maxLineBytes a longer line is a protocol error (onOverflow), never buffered whole. */
  constructor(
    private readonly onLine: (line: Buffer) => void,
    private readonly onOverflow: (bytes: number) => void,
    private readonly maxLineBytes = 64 * 1024 * 1024,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      let line = chunk.subarray(start, nl);
      if (this.pendingBytes > 0) {
        line = Buffer.concat([...this.pending, line]);
        this.pending = [];
        this.pendingBytes = 0;
      }
      if (line.length > 0 && line[line.length - 1] === 0x0d) line = line.subarray(0, line.length - 1);
      if (line.length > 0) this.onLine(line);
      start = nl + 1;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.pendingBytes += rest.length;
      if (this.pendingBytes > this.maxLineBytes) {
        const bytes = this.pendingBytes;
        this.pending = [];
        this.pendingBytes = 0;
        this.onOverflow(bytes);
        return;
      }
      // Copy: the socket may reuse its buffer.
      this.pending.push(Buffer.from(rest));
    }
  }

  /** Drops a partial line (after a resync, what came before is garbage). */
  reset(): void {
    this.pending = [];
    this.pendingBytes = 0;
  }
}

/** Parses one line as a JSON object; undefined when it is not one. */
export function parseJsonObject(line: Buffer | string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(typeof line === 'string' ? line : line.toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
