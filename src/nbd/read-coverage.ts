/**
 * Which bytes of one read request the server's chunks have covered so far. Chunks may come in
 * any order (the spec lets the server reorder them) but must never overlap; adjacent ranges
 * are merged, so a server that sends its chunks in order keeps this at one range.
 */
export class ReadCoverage {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  private covered = 0;

  get coveredBytes(): number {
    return this.covered;
  }

  /** Adds [start, end) (end > start); false, and nothing added, when it overlaps what is covered. */
  add(start: number, end: number): boolean {
    // The first range that starts at or after `start`.
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! < start) lo = mid + 1;
      else hi = mid;
    }
    const i = lo;
    if (i > 0 && this.ends[i - 1]! > start) return false;
    if (i < this.starts.length && this.starts[i]! < end) return false;
    this.covered += end - start;
    const joinsPrev = i > 0 && this.ends[i - 1] === start;
    const joinsNext = i < this.starts.length && this.starts[i] === end;
    if (joinsPrev && joinsNext) {
      this.ends[i - 1] = this.ends[i]!;
      this.starts.splice(i, 1);
      this.ends.splice(i, 1);
    } else if (joinsPrev) {
      this.ends[i - 1] = end;
    } else if (joinsNext) {
      this.starts[i] = start;
    } else {
      this.starts.splice(i, 0, start);
      this.ends.splice(i, 0, end);
    }
    return true;
  }
}
