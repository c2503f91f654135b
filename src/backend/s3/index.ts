/**
 * backend/s3 — the Backend for a bucket of any S3 service (AWS, Ceph RGW, MinIO): the
 * repository's keys under a prefix, conditional writes probed once, requests counted by kind.
 * Loaded only for s3:// repositories: the AWS SDK costs every other command start-up time.
 */
export { S3Backend, S3_UPLOAD_CONCURRENCY, type S3BackendOptions } from './s3-backend.js';
export { formatS3Location, isS3Location, parseS3Location, type S3Location } from './s3-location.js';
