import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A loopback HTTP proxy in front of a real server that misbehaves on cue, to test the client's
 * retries against the failures a network produces. For each request, `plan` picks:
 * - 'pass': forward it and its answer
 * - { status }: answer that status itself (as a proxy or overloaded server would), with `body` or none
 * - 'reset': drop the connection before reading the request
 * - 'lose-answer': forward it (the server carries it out), then drop the connection
 * - 'hang': never answer
 * - 'cut-body': forward the headers and half the body, then drop both connections (the server
 *   sees a request cut mid-body, the client a reset)
 * - 'hold-body': forward all of it but its last byte and hold it there (the server waits
 *   mid-request) until the test releases or cuts it (FaultProxy.nextHold)
 */
export type FaultAction = 'pass' | 'reset' | 'lose-answer' | 'hang' | 'cut-body' | 'hold-body' | { status: number; retryAfter?: string; body?: string };

/** A request held by 'hold-body'. */
export interface HeldRequest {
  method: string;
  url: string;
  /** Sends the rest of the body (the request goes on as if nothing happened). */
  release(): void;
  /** Drops both connections. */
  cut(): void;
}

export interface FaultProxy {
  url: string;
  /** Every request seen, in order. */
  seen: Array<{ method: string; url: string; action: FaultAction }>;
  /** The next request a 'hold-body' holds (one held earlier and not yet taken comes first). */
  nextHold(): Promise<HeldRequest>;
  close(): Promise<void>;
}

export async function startFaultProxy(target: string, plan: (req: IncomingMessage, index: number) => FaultAction): Promise<FaultProxy> {
  const t = new URL(target);
  const seen: FaultProxy['seen'] = [];
  const sockets = new Set<Socket>();
  const holds: HeldRequest[] = [];
  const holdWaiters: Array<(h: HeldRequest) => void> = [];
  const onHold = (h: HeldRequest): void => {
    const waiter = holdWaiters.shift();
    if (waiter) waiter(h);
    else holds.push(h);
  };
  const server = createServer((req, res) => {
    const action = plan(req, seen.length);
    seen.push({ method: req.method ?? '', url: req.url ?? '', action });
    if (action === 'hang') return;
    if (action === 'reset') {
      req.socket.destroy();
      return;
    }
    if (typeof action === 'object') {
      req.resume();
      req.on('end', () => {
        const body = Buffer.from(action.body ?? '');
        res.writeHead(action.status, { 'content-length': body.length, ...(action.body ? { 'content-type': 'application/xml' } : {}), ...(action.retryAfter ? { 'retry-after': action.retryAfter } : {}) });
        res.end(body);
      });
      return;
    }
    forward(t, req, res, action, onHold);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    nextHold: () => {
      const held = holds.shift();
      return held ? Promise.resolve(held) : new Promise((r) => holdWaiters.push(r));
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function forward(target: URL, req: IncomingMessage, res: ServerResponse, action: 'pass' | 'lose-answer' | 'cut-body' | 'hold-body', onHold: (h: HeldRequest) => void): void {
  const out = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
    if (action === 'lose-answer') {
      answer.resume();
      answer.on('end', () => req.socket.destroy());
      return;
    }
    res.writeHead(answer.statusCode ?? 502, answer.headers);
    answer.pipe(res);
  });
  out.on('error', () => req.socket.destroy());
  const total = Number(req.headers['content-length']);
  if ((action !== 'cut-body' && action !== 'hold-body') || !Number.isSafeInteger(total) || total < 2) {
    req.pipe(out);
    return;
  }
  // Forward the body up to `limit` bytes, then cut or hold.
  const limit = action === 'cut-body' ? Math.floor(total / 2) : total - 1;
  const rest: Buffer[] = [];
  let sent = 0;
  let held = false;
  let released = false;
  let ended = false;
  let dropped = false;
  const drop = (): void => {
    dropped = true;
    out.destroy();
    req.socket.destroy();
  };
  req.on('data', (piece: Buffer) => {
    if (dropped) return;
    if (released) {
      out.write(piece);
      return;
    }
    const room = Math.max(0, limit - sent);
    if (room > 0) out.write(piece.subarray(0, Math.min(room, piece.length)));
    sent += Math.min(room, piece.length);
    if (piece.length > room) rest.push(piece.subarray(room));
    if (sent < limit) return;
    if (action === 'cut-body') {
      drop();
    } else if (!held) {
      held = true;
      onHold({
        method: req.method ?? '',
        url: req.url ?? '',
        release: () => {
          released = true;
          for (const r of rest.splice(0)) out.write(r);
          if (ended) out.end();
        },
        cut: drop,
      });
    }
  });
  req.on('end', () => {
    ended = true;
    if (released) out.end();
  });
}
