import { z } from 'zod';
import { BlockrepError } from '../../shared/index.js';

/** Where a repository lives in object storage: a bucket and a key prefix inside it. */
export interface S3Location {
  bucket: string;
  /** '' (the whole bucket) or `a/b/`: always ends with `/`, so `backups` never covers `backups2/`. */
  prefix: string;
}

/** S3's rules for bucket names (the DNS-safe ones every implementation accepts). */
const bucketSchema = z
  .string()
  .min(3)
  .max(63)
  .regex(/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/)
  .refine((b) => !b.includes('..') && !/^\d+\.\d+\.\d+\.\d+$/.test(b));

/** Prefix segments: what the repository's own keys are made of, so nothing needs escaping. */
const SEGMENT = /^[A-Za-z0-9._-]+$/;

export function isS3Location(location: string): boolean {
  return /^s3:\/\//i.test(location);
}

/** `s3://BUCKET[/PREFIX]` → bucket and normalised prefix; USAGE with an example otherwise. */
export function parseS3Location(location: string): S3Location {
  const m = /^s3:\/\/([^/]*)(?:\/(.*))?$/i.exec(location);
  const bucket = m?.[1] ?? '';
  if (!bucketSchema.safeParse(bucket).success) {
    throw new BlockrepError('USAGE', `${location} does not name an S3 bucket: write s3://BUCKET or s3://BUCKET/PREFIX (bucket names: 3–63 lower-case letters, digits, dots and hyphens)`);
  }
  const rest = (m?.[2] ?? '').replace(/\/+$/, '');
  if (rest === '') return { bucket, prefix: '' };
  const segments = rest.split('/');
  if (segments.some((s) => !SEGMENT.test(s) || s === '.' || s === '..' || s.startsWith('.tmp-'))) {
    throw new BlockrepError('USAGE', `the prefix in ${location} must be /-separated names of letters, digits, '.', '_' and '-' (no empty, '.', '..' or .tmp- segment)`);
  }
  return { bucket, prefix: `${segments.join('/')}/` };
}

export function formatS3Location(where: S3Location): string {
  return `s3://${where.bucket}${where.prefix === '' ? '' : `/${where.prefix.slice(0, -1)}`}`;
}
