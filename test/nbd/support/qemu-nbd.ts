import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer, type Socket } from 'node:net';
import { run } from '../../support/qemu-tools.js';

/**
 * Real NBD servers and oracles for the NBD client's tests: qemu-nbd serving an image on a unix
 * socket or loopback TCP, nbdinfo (libnbd) as the reference client for maps, and a counting
 * proxy that shows how many requests a client keeps in flight.
 */

export interface QemuNbd {
  socketPath?: string;
  port?: number;
  uri: string;
  stop(): Promise<void>;
}

export interface QemuNbdOptions {
  image: string;
  format: string;
  socketPath?: string;
  /** Loopback TCP instead of a unix socket. */
  tcp?: boolean;
  exportName?: string;
  bitmaps?: string[];
  allocationDepth?: boolean;
  /** Clients served at once (qemu-nbd's --shared; default here 0, unlimited; qemu-nbd's own default is 1). */
  shared?: number;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

function canConnect(target: { path: string } | { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const socket: Socket = connect(target as never);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Starts `qemu-nbd --read-only --persistent` and waits until it accepts connections. */
export async function startQemuNbd(options: QemuNbdOptions): Promise<QemuNbd> {
  const args = ['--read-only', '--persistent', `--shared=${options.shared ?? 0}`, `--format=${options.format}`];
  let target: { path: string } | { host: string; port: number };
  let port: number | undefined;
  if (options.tcp === true) {
    port = await freePort();
    args.push('--bind=127.0.0.1', `--port=${port}`);
    target = { host: '127.0.0.1', port };
  } else {
    if (options.socketPath === undefined) throw new Error('socketPath or tcp');
    args.push(`--socket=${options.socketPath}`);
    target = { path: options.socketPath };
  }
  if (options.exportName !== undefined) args.push(`--export-name=${options.exportName}`);
  for (const bitmap of options.bitmaps ?? []) args.push(`--bitmap=${bitmap}`);
  if (options.allocationDepth === true) args.push('--allocation-depth');
  args.push(options.image);
  const child: ChildProcess = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 10_000;
  while (!(await canConnect(target))) {
    if (gone) throw new Error(`qemu-nbd ${args.join(' ')} exited: ${stderr}`);
    if (Date.now() > deadline) {
      child.kill();
      throw new Error(`qemu-nbd did not listen within 10 s: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const name = encodeURIComponent(options.exportName ?? '');
  const uri = options.tcp === true ? `nbd://127.0.0.1:${port}/${name}` : `nbd+unix:///${name}?socket=${options.socketPath}`;
  return {
    ...(options.socketPath !== undefined && options.tcp !== true ? { socketPath: options.socketPath } : {}),
    ...(port !== undefined ? { port } : {}),
    uri,
    async stop() {
      if (!gone) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}

export interface MapExtent {
  offset: number;
  length: number;
  type: number;
}

/** `nbdinfo --map[=CONTEXT] --json URI`: libnbd's view of a context. */
export async function nbdinfoMap(uri: string, context?: string): Promise<MapExtent[]> {
  const { stdout } = await run('nbdinfo', [context === undefined ? '--map' : `--map=${context}`, '--json', uri]);
  return (JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>).map(({ offset, length, type }) => ({ offset, length, type }));
}

/** Merges neighbours with the same flags, so maps cut at different places compare equal. */
export function coalesce(extents: Iterable<{ offset: number; length: number; type?: number; flags?: number }>): MapExtent[] {
  const out: MapExtent[] = [];
  for (const e of extents) {
    const type = e.type ?? e.flags ?? 0;
    const last = out[out.length - 1];
    if (last && last.type === type && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length, type });
  }
  return out;
}

/**
 * A unix-socket proxy in front of an NBD server that counts the client's requests. At the first
 * request it holds the server's replies back until `holdUntil` requests have arrived or
 * `quietMs` passed without a new one: `maxHeld` is how many requests the client sent before it
 * saw any reply, i.e. how many it keeps in flight.
 */
export async function startCountingProxy(listenPath: string, upstreamPath: string, holdUntil: number, quietMs = 300): Promise<{ maxHeld: () => number; requests: () => number; stop: () => Promise<void> }> {
  let maxHeld = 0;
  let requests = 0;
  const server = createServer((client) => {
    const upstream = connect({ path: upstreamPath });
    let clientBytes = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'requests' = 'flags';
    let holding = false;
    let heldReplies: Buffer[] = [];
    let heldCount = 0;
    let quiet: NodeJS.Timeout | undefined;
    const release = (): void => {
      if (!holding) return;
      holding = false;
      maxHeld = Math.max(maxHeld, heldCount);
      for (const b of heldReplies) client.write(b);
      heldReplies = [];
    };
    client.on('data', (d: Buffer) => {
      upstream.write(d);
      clientBytes = Buffer.concat([clientBytes, d]);
      for (;;) {
        if (phase === 'flags') {
          if (clientBytes.length < 4) break;
          clientBytes = clientBytes.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (clientBytes.length < 16) break;
          const option = clientBytes.readUInt32BE(8);
          const len = clientBytes.readUInt32BE(12);
          if (clientBytes.length < 16 + len) break;
          clientBytes = clientBytes.subarray(16 + len);
          if (option === 7) phase = 'requests';
        } else {
          if (clientBytes.length < 28) break;
          const type = clientBytes.readUInt16BE(6);
          clientBytes = clientBytes.subarray(28);
          if (type === 2) continue; // NBD_CMD_DISC
          requests++;
          if (requests === 1) {
            holding = true;
            heldCount = 0;
          }
          if (holding) {
            heldCount++;
            if (quiet) clearTimeout(quiet);
            if (heldCount >= holdUntil) release();
            else quiet = setTimeout(release, quietMs);
          }
        }
      }
    });
    upstream.on('data', (d: Buffer) => {
      if (holding && phase === 'requests') heldReplies.push(d);
      else client.write(d);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(listenPath, resolve));
  return {
    maxHeld: () => maxHeld,
    requests: () => requests,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
