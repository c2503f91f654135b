/**
 * The load of a shared machine while a benchmark runs: busy CPU time of the whole machine and of
 * some processes (from /proc), the cores everything else used between two samples, and a wait
 * for a quieter moment. Benchmarks record these beside their figures, since on a shared 2-core
 * machine a TCG guest runs only as fast as QEMU gets CPU.
 */
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';

const USER_HZ = 100;

/** Busy CPU seconds of the machine, and of the given processes together (gone ones count 0). */
export function cpuSample(pids = []) {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  let own = 0;
  for (const pid of pids) {
    try {
      const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = st.slice(st.lastIndexOf(')') + 2).split(' ');
      own += (Number(fields[11]) + Number(fields[12])) / USER_HZ;
    } catch {
      // the process is gone
    }
  }
  return { at: Date.now(), busy: (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / USER_HZ, own };
}

/** Cores used between two samples by everything but the processes sampled. */
export function otherCores(a, b) {
  return Number(Math.max(0, (b.busy - a.busy - (b.own - a.own)) / ((b.at - a.at) / 1000)).toFixed(2));
}

/** Waits up to `maxSeconds` until other processes use less than `cores` over 2 s; returns that load. */
export async function waitForQuiet(pids, maxSeconds, cores = 0.25) {
  const deadline = Date.now() + maxSeconds * 1000;
  let load;
  do {
    const a = cpuSample(pids);
    await new Promise((r) => setTimeout(r, 2000));
    load = otherCores(a, cpuSample(pids));
    if (load < cores) break;
  } while (Date.now() < deadline);
  return load;
}

/** The machine, for a results file. */
export function machineFacts() {
  return { cpu: cpus()[0]?.model ?? '?', cores: cpus().length, node: process.version, loadavg: loadavg().map((x) => Number(x.toFixed(2))) };
}
