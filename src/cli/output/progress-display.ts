import type { Progress } from '../../app/index.js';
import { formatBytes } from '../../shared/index.js';

/**
 * A one-line progress display on the terminal (stderr), redrawn at most a few times a second.
 * Created only when stdout is a terminal and JSON output is off.
 */
export class ProgressDisplay {
  private lastDraw = 0;
  private startedAt = Date.now();
  private current = '';
  private drawn = false;

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {}

  update(p: Progress): void {
    const now = Date.now();
    const key = `${p.kind}:${p.disk}`;
    if (key !== this.current) {
      this.current = key;
      this.startedAt = now;
    }
    const finished = p.blocksDone >= p.blocks;
    if (!finished && now - this.lastDraw < 200) return;
    this.lastDraw = now;
    const seconds = Math.max(0.001, (now - this.startedAt) / 1000);
    const fraction = p.blocks === 0 ? 1 : p.blocksDone / p.blocks;
    const bytesDone = Math.min(p.blocksDone * p.blockSize, p.blocks * p.blockSize);
    const rate = bytesDone / seconds;
    const eta = fraction > 0 && fraction < 1 ? ` ETA ${formatDuration((seconds / fraction) * (1 - fraction))}` : '';
    let line = `${p.kind} ${p.disk}: ${(fraction * 100).toFixed(1)}% ${formatBytes(rate)}/s`;
    if (p.kind === 'scan') line += `, ${p.changedBlocks} changed, ${formatBytes(p.bytesSent)} stored`;
    line += eta;
    this.stream.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }

  /** Clears the line so the final report starts on a clean line. */
  clear(): void {
    if (this.drawn) this.stream.write('\r\x1b[2K');
    this.drawn = false;
  }
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
