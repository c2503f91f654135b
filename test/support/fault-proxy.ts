import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A loopback HTTP proxy in front of a real server that misbehaves on cue, to test the client's
 * retries against the failures a network produces. For each request, `plan` picks:
 * - 'pass': forward it and its answer
 * - { status }: answer that status itself (as a proxy or overloaded server would), no body
 * - 'reset': drop the connection before reading the request
 * - 'lose-answer': forward it (the server carries it out), then drop the connection
 * - 'hang': never answer
 */
export type FaultAction = 'pass' | 'reset' | 'lose-answer' | 'hang' | { status: number; retryAfter?: string };

export interface FaultProxy {
  url: string;
  /** Every request seen, in order. */
  seen: Array<{ method: string; url: string; action: FaultAction }>;
  close(): Promise<void>;
}

export async function startFaultProxy(target: string, plan: (req: IncomingMessage, index: number) => FaultAction): Promise<FaultProxy> {
  const t = new URL(target);
  const seen: FaultProxy['seen'] = [];
  const sockets = new Set<Socket>();
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
        res.writeHead(action.status, { 'content-length': 0, ...(action.retryAfter ? { 'retry-after': action.retryAfter } : {}) });
        res.end();
      });
      return;
    }
    forward(t, req, res, action === 'lose-answer');
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function forward(target: URL, req: IncomingMessage, res: ServerResponse, loseAnswer: boolean): void {
  const out = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
    if (loseAnswer) {
      answer.resume();
      answer.on('end', () => req.socket.destroy());
      return;
    }
    res.writeHead(answer.statusCode ?? 502, answer.headers);
    answer.pipe(res);
  });
  out.on('error', () => req.socket.destroy());
  req.pipe(out);
}
