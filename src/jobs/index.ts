/**
 * jobs — `blockrep run`: every VM of a job configuration, a few at a time, with retention after
 * each; the dry-run checks; the report and events it produces (data; printers live in cli).
 */
export { runJobs } from './run-jobs.js';
export { type RunEvent, type RunReport, type VmRunReport } from './run-report.js';
