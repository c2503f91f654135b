import { describe, expect, it } from 'vitest';
import { ProgressDisplay } from '../../src/cli/output/progress-display.js';

function fakeStream(): { stream: NodeJS.WriteStream; text: () => string } {
  const parts: string[] = [];
  const stream = { write: (s: string) => parts.push(s) > 0 } as unknown as NodeJS.WriteStream;
  return { stream, text: () => parts.join('') };
}

describe('progress display', () => {
  it('shows percent, rate, changed blocks and an ETA, and clears its line', () => {
    const { stream, text } = fakeStream();
    const d = new ProgressDisplay(stream);
    d.update({ kind: 'scan', disk: 'vm/vda', blocksDone: 250, blocks: 1000, blockSize: 1 << 20, changedBlocks: 7, bytesRead: 250 << 20, bytesSent: 3 << 20 });
    expect(text()).toMatch(/scan vm\/vda: 25\.0% .*\/s, 7 changed, 3\.00 MiB stored ETA \d+/);
    d.clear();
    expect(text().endsWith('\r\x1b[2K')).toBe(true);
  });

  it('redraws at most a few times a second but always draws the end', () => {
    const { stream, text } = fakeStream();
    const d = new ProgressDisplay(stream);
    for (let i = 1; i <= 100; i++) d.update({ kind: 'restore', disk: 'd', version: 'v', blocksDone: i, blocks: 100, blockSize: 4096 });
    const draws = text().split('\r\x1b[2K').filter(Boolean);
    expect(draws.length).toBeLessThanOrEqual(2);
    expect(draws.at(-1)).toMatch(/100\.0%/);
  });
});
