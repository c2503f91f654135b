import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** The body parsed as JSON, when it is JSON. */
  json: any;
}

/**
 * One HTTP request exactly as given (the path is not normalised, unlike fetch), for feeding a
 * server what a well-behaved client never sends. A connection the server cuts after answering
 * still yields the answer.
 */
export function rawRequest(
  base: string,
  method: string,
  path: string,
  options: { headers?: Record<string, string | number>; body?: Uint8Array | string; ca?: Buffer } = {},
): Promise<RawResponse> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const send = url.protocol === 'https:' ? httpsRequest : request;
    const req = send(
      { host: url.hostname, port: url.port, method, path, headers: options.headers, agent: false, ...(options.ca ? { ca: options.ca } : {}) },
      (res) => {
        answered = true;
        const pieces: Buffer[] = [];
        res.on('data', (d: Buffer) => pieces.push(d));
        res.on('end', () => {
          const body = Buffer.concat(pieces);
          let json: unknown;
          try {
            json = JSON.parse(body.toString('utf8'));
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json });
        });
        res.on('error', reject);
      },
    );
    let answered = false;
    // Writing the rest of a body the server refused may fail once it has answered: that is fine.
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    req.end(options.body);
  });
}
