/** What long-running use cases report while they work; printers decide how to show it. */
export interface ScanProgress {
  kind: 'scan';
  disk: string;
  blocksDone: number;
  blocks: number;
  blockSize: number;
  changedBlocks: number;
  bytesRead: number;
  bytesSent: number;
}

export interface RestoreProgress {
  kind: 'restore' | 'verify';
  disk: string;
  version: string;
  blocksDone: number;
  blocks: number;
  blockSize: number;
}

export type Progress = ScanProgress | RestoreProgress;
export type ProgressListener = (p: Progress) => void;
