import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

export interface SlowAnswer {
  /** 0: the connection closed without an answer. */
  status: number;
  headers: Record<string, string>;
  body: string;
  json: any;
  /** ms from opening the connection to the answer (or the close). */
  ms: number;
}

export interface SlowRequest {
  socket: Socket;
  /** Sends more of the body (ignored once the connection is closed). */
  send(piece: Uint8Array | string): void;
  answer: Promise<SlowAnswer>;
  close(): void;
}

/**
 * A request written by hand over a plain TCP connection, for clients a well-behaved library
 * never is: a head that promises a body, then as much (or as little) of it as the test sends,
 * when it sends it. `localAddress` makes it another client (127.0.0.2 is loopback too).
 */
export function slowRequest(
  url: string,
  method: string,
  path: string,
  options: { headers?: Record<string, string | number>; body?: Uint8Array | string; localAddress?: string } = {},
): SlowRequest {
  const { hostname, port } = new URL(url);
  const started = performance.now();
  const socket = connect({ host: hostname, port: Number(port), ...(options.localAddress ? { localAddress: options.localAddress } : {}) });
  const head = [`${method} ${path} HTTP/1.1`, `host: ${hostname}:${port}`, ...Object.entries(options.headers ?? {}).map(([k, v]) => `${k}: ${v}`), '', ''].join('\r\n');
  socket.write(head);
  if (options.body !== undefined) socket.write(options.body);
  const answer = new Promise<SlowAnswer>((resolve) => {
    let data = Buffer.alloc(0);
    let done = false;
    const finish = (a: Omit<SlowAnswer, 'ms' | 'json'>): void => {
      if (done) return;
      done = true;
      let json: unknown;
      try {
        json = JSON.parse(a.body);
      } catch {
        json = undefined;
      }
      resolve({ ...a, json, ms: performance.now() - started });
    };
    const parse = (): void => {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const lines = data.subarray(0, end).toString('latin1').split('\r\n');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0]!)?.[1] ?? 0);
      const headers: Record<string, string> = {};
      for (const line of lines.slice(1)) {
        const i = line.indexOf(':');
        headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
      }
      const length = Number(headers['content-length'] ?? 0);
      if (data.length - end - 4 >= length) finish({ status, headers, body: data.subarray(end + 4, end + 4 + length).toString('utf8') });
    };
    socket.on('data', (d: Buffer) => {
      data = Buffer.concat([data, d]);
      parse();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => finish({ status: 0, headers: {}, body: '' }));
  });
  return {
    socket,
    send: (piece) => {
      if (!socket.destroyed && socket.writable) socket.write(piece);
    },
    answer,
    close: () => socket.destroy(),
  };
}
