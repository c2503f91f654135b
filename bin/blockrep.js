#!/usr/bin/env node
// Chunk writes fsync, and scan workers read through the same libuv pool: 4 threads (the
// default) leave the scan waiting behind fsyncs. Must be set before any I/O starts.
process.env.UV_THREADPOOL_SIZE ??= '16';
await import('../dist/cli/main.js');
