import { createServer, type Server, type Socket } from 'node:net';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, qmpErrorClass } from '../../src/hypervisor/qmp-client.js';
import { BlockrepError } from '../../src/shared/blockrep-error.js';
import { tempDir } from '../support/temp-dir.js';
import { skipQemuTests, startPausedVm, withQmp, type PausedVm } from './support/paused-vm.js';

/**
 * The QMP client against a scripted fake monitor (for the protocol's corners) and against a
 * real QEMU (for what QEMU really does).
 */

let dir: string;
beforeAll(async () => {
  dir = await tempDir('blockrep-qmp-');
});

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "test"}, "capabilities": ["oob"]}}\r\n';

/** A fake monitor: greets, then answers each command with `respond` (which may write anything). */
async function fakeMonitor(name: string, respond: (cmd: Record<string, any>, sock: Socket) => void, greet = true): Promise<{ path: string; server: Server; received: Array<Record<string, any>> }> {
  const path = join(dir, `${name}.sock`);
  const received: Array<Record<string, any>> = [];
  const server = createServer((sock) => {
    if (greet) sock.write(GREETING);
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = JSON.parse(line);
        received.push(cmd);
        if (cmd.execute === 'qmp_capabilities') sock.write(`${JSON.stringify({ return: {}, id: cmd.id })}\r\n`);
        else respond(cmd, sock);
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(path, r));
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  return { path, server, received };
}

const reply = (sock: Socket, obj: unknown): void => {
  sock.write(`${JSON.stringify(obj)}\r\n`);
};

describe('QmpClient (protocol)', () => {
  it('negotiates capabilities without OOB, then matches replies to commands by id, in any order', async () => {
    const held: Array<Record<string, any>> = [];
    const m = await fakeMonitor('order', (cmd, sock) => {
      held.push(cmd);
      if (held.length === 2) {
        // Answer the second first, split across writes.
        const second = JSON.stringify({ return: { n: 2 }, id: held[1]!.id });
        sock.write(second.slice(0, 10));
        setTimeout(() => {
          sock.write(`${second.slice(10)}\r\n`);
          reply(sock, { return: { n: 1 }, id: held[0]!.id });
        }, 20);
      }
    });
    const qmp = await QmpClient.connect(m.path);
    expect(m.received[0]).toMatchObject({ execute: 'qmp_capabilities' });
    expect(m.received[0]!.arguments).toBeUndefined();
    expect(qmp.greeting.QMP.version.qemu.major).toBe(7);
    const schema = z.object({ n: z.number() });
    const [a, b] = await Promise.all([qmp.execute('one', undefined, schema), qmp.execute('two', { x: 1 }, schema)]);
    expect(a.n).toBe(1);
    expect(b.n).toBe(2);
    expect(m.received[2]).toMatchObject({ execute: 'two', arguments: { x: 1 } });
    await qmp.close();
  });

  it('delivers an event that arrives before the reply to a waiter registered before the command', async () => {
    const m = await fakeMonitor('events', (cmd, sock) => {
      reply(sock, { event: 'JOB_STATUS_CHANGE', data: { id: 'j1', status: 'created' }, timestamp: { seconds: 1, microseconds: 2 } });
      reply(sock, { event: 'JOB_STATUS_CHANGE', data: { id: 'j1', status: 'running' }, timestamp: { seconds: 1, microseconds: 3 } });
      reply(sock, { return: {}, id: cmd.id });
    });
    const qmp = await QmpClient.connect(m.path);
    const all: string[] = [];
    qmp.onEvent((e) => all.push(String(e.data?.status)));
    const running = qmp.waitForEvent('JOB_STATUS_CHANGE', (d) => d.id === 'j1' && d.status === 'running', { timeoutMs: 2000 });
    const other = qmp.waitForEvent('JOB_STATUS_CHANGE', (d) => d.id === 'j2', { timeoutMs: 100 });
    await qmp.execute('block-commit', { 'job-id': 'j1' }, z.unknown());
    expect((await running.promise).data).toMatchObject({ status: 'running' });
    expect(all).toEqual(['created', 'running']);
    await expect(other.promise).rejects.toMatchObject({ code: 'QMP_ERROR', details: { timeout: true } });
    const cancelled = qmp.waitForEvent('NEVER');
    cancelled.cancel();
    await expect(cancelled.promise).rejects.toBeInstanceOf(BlockrepError);
    await qmp.close();
  });

  it('checks replies with zod, reports QEMU errors with their class, and times out', async () => {
    const m = await fakeMonitor('errors', (cmd, sock) => {
      if (cmd.execute === 'bad-shape') reply(sock, { return: { size: 'big' }, id: cmd.id });
      if (cmd.execute === 'refused') reply(sock, { error: { class: 'DeviceNotFound', desc: 'Device x not found' }, id: cmd.id });
      if (cmd.execute === 'slow') setTimeout(() => reply(sock, { return: 'late', id: cmd.id }), 150);
      if (cmd.execute === 'fast') reply(sock, { return: 'ok', id: cmd.id });
    });
    const qmp = await QmpClient.connect(m.path);
    await expect(qmp.execute('bad-shape', undefined, z.object({ size: z.number() }))).rejects.toMatchObject({ code: 'QMP_ERROR', message: expect.stringContaining('bad-shape') });
    const refused = await qmp.execute('refused', undefined, z.unknown()).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'QMP_ERROR', details: { command: 'refused', errorClass: 'DeviceNotFound' } });
    expect(qmpErrorClass(refused)).toBe('DeviceNotFound');
    await expect(qmp.execute('slow', undefined, z.unknown(), { timeoutMs: 50 })).rejects.toMatchObject({ code: 'QMP_ERROR', details: { timeout: true } });
    // The late reply to the abandoned command is not taken for the next one's.
    await new Promise((r) => setTimeout(r, 150));
    expect(await qmp.execute('fast', undefined, z.string())).toBe('ok');
    await qmp.close();
  });

  it('fails pending commands and waiters when the connection closes', async () => {
    const m = await fakeMonitor('closing', (_cmd, sock) => sock.destroy());
    const qmp = await QmpClient.connect(m.path);
    const waiter = qmp.waitForEvent('SHUTDOWN');
    await expect(qmp.execute('anything', undefined, z.unknown())).rejects.toMatchObject({ code: 'QMP_ERROR', message: expect.stringContaining('closed') });
    await expect(waiter.promise).rejects.toMatchObject({ code: 'QMP_ERROR' });
    expect(qmp.closed).toBe(true);
    await expect(qmp.execute('again', undefined, z.unknown())).rejects.toMatchObject({ code: 'QMP_ERROR' });
  });

  it('says QMP_UNAVAILABLE when there is no socket, nothing listens, or it is not QMP', async () => {
    await expect(QmpClient.connect(join(dir, 'absent.sock'))).rejects.toMatchObject({ code: 'QMP_UNAVAILABLE', message: expect.stringContaining('no such socket') });
    const file = join(dir, 'plain-file');
    await writeFile(file, 'x');
    await expect(QmpClient.connect(file)).rejects.toMatchObject({ code: 'QMP_UNAVAILABLE' });
    const notQmp = join(dir, 'http.sock');
    const server = createServer((s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    await new Promise<void>((r) => server.listen(notQmp, r));
    await expect(QmpClient.connect(notQmp)).rejects.toMatchObject({ code: 'QMP_UNAVAILABLE', message: expect.stringContaining('not a QEMU monitor') });
    server.close();
  });

  it('says QMP_BUSY when the monitor accepts but never greets (another client holds it)', async () => {
    const m = await fakeMonitor('silent', () => undefined, false);
    const t = Date.now();
    await expect(QmpClient.connect(m.path, { greetingTimeoutMs: 300 })).rejects.toMatchObject({ code: 'QMP_BUSY', message: expect.stringContaining('another client') });
    expect(Date.now() - t).toBeLessThan(2000);
  });
});

describe.skipIf(skipQemuTests)('QmpClient (real QEMU)', () => {
  let vm: PausedVm;
  beforeAll(async () => {
    vm = await startPausedVm(join(dir, 'vm'), [], 'qmp-test-vm');
  });
  afterAll(async () => {
    await vm?.stop();
  });

  it('talks to QEMU, and a second client at the same time gets QMP_BUSY', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      expect(await qmp.execute('query-name', undefined, z.object({ name: z.string() }))).toEqual({ name: 'qmp-test-vm' });
      const err = await QmpClient.connect(vm.qmpSocket, { greetingTimeoutMs: 1000 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'QMP_BUSY' });
      // The first client is unharmed.
      expect(await qmp.execute('query-status', undefined, z.object({ status: z.string() }))).toMatchObject({ status: 'prelaunch' });
      const refused = await qmp.execute('no-such-command', undefined, z.unknown()).catch((e: unknown) => e);
      expect(qmpErrorClass(refused)).toBe('CommandNotFound');
    });
    // Free again once the first client left.
    await withQmp(vm.qmpSocket, async (qmp) => expect(qmp.closed).toBe(false));
  });

  it('sees the events of a command before or after its reply, as QEMU sends them', async () => {
    await withQmp(vm.qmpSocket, async (qmp) => {
      const stop = qmp.waitForEvent('STOP', () => true, { timeoutMs: 5000 });
      const resume = qmp.waitForEvent('RESUME', () => true, { timeoutMs: 5000 });
      await qmp.execute('cont', undefined, z.unknown());
      await resume.promise;
      await qmp.execute('stop', undefined, z.unknown());
      await stop.promise;
    });
  });
});
