/**
 * config — the job configuration of `blockrep run`: YAML (or JSON) checked by zod, every
 * mistake reported at once as FILE:LINE:COL with what to write instead.
 */
export { loadJobConfig, type ImageVmJob, type JobConfig, type LibvirtVmJob, type LiveVmJob, type VmJob, type JobHooks, type HookCommand, DEFAULT_HOOK_TIMEOUT_MS } from './job-config.js';
