import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestAgentClient } from '../../src/hypervisor/guest-agent-client.js';
import { unixPathOfChardev } from '../../src/hypervisor/guest-agent-channel.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * The guest-agent client against a scripted fake agent that behaves as qemu-ga does on the wire
 * (0xFF resync, guest-sync-delimited, replies with the request's id), plus the ways a real
 * channel misbehaves: garbage and stale replies before a resync, silence, a missing socket.
 * The real agent in a real guest is exercised by test/live.
 */

let dir: string;
beforeAll(async () => {
  dir = await tempDir('blockrep-qga-');
});

interface FakeAgentState {
  frozen: boolean;
  commands: string[];
  connections: number;
}

type Behaviour = (cmd: Record<string, any>, sock: Socket, state: FakeAgentState) => boolean | void;

/**
 * A fake agent. Like qemu-ga, a 0xFF byte makes it drop what it was parsing and answer with a
 * parse error; guest-sync-delimited is answered with 0xFF + {"return": id}. `behaviour` may take
 * over any command (return true).
 */
async function fakeAgent(name: string, behaviour: Behaviour = () => false, options: { garbageOnConnect?: boolean } = {}): Promise<{ path: string; state: FakeAgentState }> {
  const path = join(dir, `${name}.sock`);
  const state: FakeAgentState = { frozen: false, commands: [], connections: 0 };
  const server = createServer((sock) => {
    state.connections++;
    // A stale reply, a stale sync answer (0xFF + another id) and half a line, as a previous
    // client's abandoned commands can leave in the channel.
    if (options.garbageOnConnect) sock.write(Buffer.concat([Buffer.from('{"return": 99}\n'), Buffer.from([0xff]), Buffer.from('{"return": 12}\n{"ret')]));
    let buf = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const ff = buf.indexOf(0xff);
        const nl = buf.indexOf(0x0a);
        if (ff >= 0 && (nl < 0 || ff < nl)) {
          buf = buf.subarray(ff + 1);
          sock.write('{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\n');
          continue;
        }
        if (nl < 0) break;
        const line = buf.subarray(0, nl).toString();
        buf = buf.subarray(nl + 1);
        const cmd = JSON.parse(line);
        state.commands.push(cmd.execute);
        if (behaviour(cmd, sock, state)) continue;
        const id = cmd.id === undefined ? {} : { id: cmd.id };
        switch (cmd.execute) {
          case 'guest-sync-delimited':
            sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(`${JSON.stringify({ return: cmd.arguments.id })}\n`)]));
            break;
          case 'guest-fsfreeze-freeze':
            sock.write(`${JSON.stringify({ return: state.frozen ? 0 : 2, ...id })}\n`);
            state.frozen = true;
            break;
          case 'guest-fsfreeze-freeze-list':
            state.frozen = true;
            sock.write(`${JSON.stringify({ return: cmd.arguments.mountpoints.length, ...id })}\n`);
            break;
          case 'guest-fsfreeze-thaw':
            sock.write(`${JSON.stringify({ return: state.frozen ? 2 : 0, ...id })}\n`);
            state.frozen = false;
            break;
          case 'guest-fsfreeze-status':
            sock.write(`${JSON.stringify({ return: state.frozen ? 'frozen' : 'thawed', ...id })}\n`);
            break;
          default:
            sock.write(`${JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` }, ...id })}\n`);
        }
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(path, r));
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  return { path, state };
}

describe('GuestAgentClient', () => {
  it('resyncs on connect past garbage and stale sync replies, then freezes, reports and thaws', async () => {
    const a = await fakeAgent('basic', () => false, { garbageOnConnect: true });
    const qga = await GuestAgentClient.connect(a.path);
    expect(a.state.commands[0]).toBe('guest-sync-delimited');
    expect(await qga.status()).toBe('thawed');
    expect(await qga.freeze()).toBe(2);
    expect(await qga.status()).toBe('frozen');
    expect(await qga.thaw()).toBe(2);
    expect(await qga.thaw()).toBe(0);
    expect(await qga.freezeList(['/mnt/a'])).toBe(1);
    expect(await qga.thaw()).toBe(2);
    await qga.close();
  });

  it('turns a refused command into AGENT_ERROR with its class', async () => {
    const a = await fakeAgent('refusing', (cmd, sock) => {
      if (cmd.execute !== 'guest-fsfreeze-freeze') return false;
      sock.write(`${JSON.stringify({ error: { class: 'GenericError', desc: 'hook failed' }, id: cmd.id })}\n`);
      return true;
    });
    const qga = await GuestAgentClient.connect(a.path);
    await expect(qga.freeze()).rejects.toMatchObject({ code: 'AGENT_ERROR', details: { errorClass: 'GenericError' }, message: expect.stringContaining('hook failed') });
    // The client is still in step.
    expect(await qga.status()).toBe('thawed');
    await qga.close();
  });

  it('after a timeout it resyncs, and never takes the late reply for the next answer', async () => {
    let slowOnce = true;
    const a = await fakeAgent('slow', (cmd, sock) => {
      if (cmd.execute !== 'guest-fsfreeze-status' || !slowOnce) return false;
      slowOnce = false;
      // Answers far too late, with a reply that would be wrong for the next command.
      setTimeout(() => sock.write(`${JSON.stringify({ return: 'frozen', id: cmd.id })}\n`), 150);
      return true;
    });
    const qga = await GuestAgentClient.connect(a.path);
    await expect(qga.status(50)).rejects.toMatchObject({ code: 'AGENT_ERROR', details: { timeout: true } });
    await new Promise((r) => setTimeout(r, 200));
    expect(await qga.status()).toBe('thawed');
    const syncs = a.state.commands.filter((c) => c === 'guest-sync-delimited').length;
    expect(syncs).toBe(2);
    await qga.close();
  });

  it('says AGENT_UNAVAILABLE when nothing answers the resync (no agent in the guest)', async () => {
    const a = await fakeAgent('silent', () => true);
    const t = Date.now();
    await expect(GuestAgentClient.connect(a.path, { syncTimeoutMs: 200 })).rejects.toMatchObject({
      code: 'AGENT_UNAVAILABLE',
      message: expect.stringContaining('no guest agent answers'),
    });
    expect(Date.now() - t).toBeLessThan(2000);
  });

  it('says AGENT_UNAVAILABLE when the socket does not exist', async () => {
    await expect(GuestAgentClient.connect(join(dir, 'absent.sock'))).rejects.toMatchObject({ code: 'AGENT_UNAVAILABLE', message: expect.stringContaining('no such socket') });
  });

  it('runs one command at a time', async () => {
    const a = await fakeAgent('serial', (cmd, sock) => {
      if (cmd.execute !== 'guest-fsfreeze-freeze') return false;
      setTimeout(() => sock.write(`${JSON.stringify({ return: 2, id: cmd.id })}\n`), 50);
      return true;
    });
    const qga = await GuestAgentClient.connect(a.path);
    const [n, s] = await Promise.all([qga.freeze(), qga.status()]);
    expect(n).toBe(2);
    expect(s).toBe('thawed');
    expect(a.state.commands.slice(-2)).toEqual(['guest-fsfreeze-freeze', 'guest-fsfreeze-status']);
    await qga.close();
  });
});

describe('unixPathOfChardev', () => {
  it('reads the socket path out of query-chardev filenames', () => {
    expect(unixPathOfChardev('disconnected:unix:/run/vm/qga.sock,server=on')).toBe('/run/vm/qga.sock');
    expect(unixPathOfChardev('unix:/run/vm/qga.sock,server=on')).toBe('/run/vm/qga.sock');
    expect(unixPathOfChardev('unix:/tmp/x.sock')).toBe('/tmp/x.sock');
    expect(unixPathOfChardev('file')).toBeUndefined();
    expect(unixPathOfChardev('pty:/dev/pts/3')).toBeUndefined();
  });
});
