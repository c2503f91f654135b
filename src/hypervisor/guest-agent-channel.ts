import { realpath } from 'node:fs/promises';
import { z } from 'zod';
import { BlockrepError } from '../shared/index.js';
import { GuestAgentClient, type GuestAgentOptions } from './guest-agent-client.js';
import type { QmpClient } from './qmp-client.js';

/**
 * Finds the guest agent's channel through QMP and opens it. QEMU accepts connections to the
 * agent's socket whether or not an agent runs in the guest, so QMP is asked first:
 * `query-chardev` says whether the guest has opened the port (`frontend-open`). Without a
 * socket path, the channel is found in the VM's device tree (the virtserialport named
 * org.qemu.guest_agent.0 and its chardev).
 */

export const GUEST_AGENT_PORT_NAME = 'org.qemu.guest_agent.0';

const chardevListSchema = z.array(z.object({ label: z.string(), filename: z.string(), 'frontend-open': z.boolean() }));
const qomListSchema = z.array(z.object({ name: z.string(), type: z.string() }));

export interface AgentChannel {
  /** Host-side unix socket of the channel. */
  socketPath: string;
  /** The chardev's label, when QMP knows the socket. */
  chardev: string | undefined;
  /** Whether the guest has the port open (an agent runs); undefined when QMP does not know the socket. */
  frontendOpen: boolean | undefined;
}

/** The unix socket path of a chardev's `filename` ("disconnected:unix:/p,server=on", "unix:/p"). */
export function unixPathOfChardev(filename: string): string | undefined {
  const m = /^(?:disconnected:)?unix:(.*?)(?:,server(?:=on)?)?(?:,[a-z-]+(?:=[^,]*)?)*$/.exec(filename);
  return m?.[1] || undefined;
}

async function canonical(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

/**
 * The agent channel: the one at `socketPath` when given, else the one found in the device tree.
 * undefined when no socket was given and the VM has no agent channel on a unix socket.
 */
export async function findAgentChannel(qmp: QmpClient, socketPath?: string): Promise<AgentChannel | undefined> {
  const chardevs = await qmp.execute('query-chardev', undefined, chardevListSchema);
  if (socketPath !== undefined) {
    const want = await canonical(socketPath);
    for (const c of chardevs) {
      const p = unixPathOfChardev(c.filename);
      if (p !== undefined && (p === socketPath || (await canonical(p)) === want)) return { socketPath, chardev: c.label, frontendOpen: c['frontend-open'] };
    }
    return { socketPath, chardev: undefined, frontendOpen: undefined };
  }
  const label = await findAgentChardevLabel(qmp);
  if (label === undefined) return undefined;
  const c = chardevs.find((x) => x.label === label);
  const p = c ? unixPathOfChardev(c.filename) : undefined;
  if (!c || p === undefined) return undefined;
  return { socketPath: p, chardev: c.label, frontendOpen: c['frontend-open'] };
}

/** The chardev label of the virtserialport named org.qemu.guest_agent.0, if there is one. */
async function findAgentChardevLabel(qmp: QmpClient): Promise<string | undefined> {
  for (const parent of ['/machine/peripheral', '/machine/peripheral-anon']) {
    let children: z.infer<typeof qomListSchema>;
    try {
      children = await qmp.execute('qom-list', { path: parent }, qomListSchema);
    } catch {
      continue;
    }
    for (const child of children) {
      if (!/^child<virtserialport>$/.test(child.type)) continue;
      const path = `${parent}/${child.name}`;
      try {
        const name = await qmp.execute('qom-get', { path, property: 'name' }, z.string());
        if (name !== GUEST_AGENT_PORT_NAME) continue;
        return await qmp.execute('qom-get', { path, property: 'chardev' }, z.string());
      } catch {
        continue;
      }
    }
  }
  return undefined;
}

/**
 * Opens the guest agent: checks with QMP that the guest has its port open, then connects and
 * resyncs. AGENT_UNAVAILABLE, with the reason, when no agent can answer.
 */
export async function openGuestAgent(
  qmp: QmpClient,
  socketPath: string | undefined,
  options: GuestAgentOptions = {},
  onWarning?: (message: string) => void,
): Promise<GuestAgentClient> {
  const channel = await findAgentChannel(qmp, socketPath);
  if (!channel) {
    throw new BlockrepError(
      'AGENT_UNAVAILABLE',
      `the VM has no guest agent channel (a virtserialport named ${GUEST_AGENT_PORT_NAME} on a unix socket chardev); give its socket with --qga, or back up without quiescing`,
    );
  }
  if (channel.frontendOpen === false) {
    throw new BlockrepError(
      'AGENT_UNAVAILABLE',
      `no guest agent runs in the guest: the guest has not opened the agent's port (chardev ${channel.chardev}, ${channel.socketPath}); start qemu-guest-agent in the guest`,
      { details: { socket: channel.socketPath, chardev: channel.chardev } },
    );
  }
  if (channel.chardev === undefined) {
    // QEMU may know the socket by a relative path; but it may also be another VM's agent.
    onWarning?.(`the guest agent socket ${channel.socketPath} is not among this VM's chardevs (query-chardev); make sure it is this VM's agent`);
  }
  return GuestAgentClient.connect(channel.socketPath, options);
}
