/*
 * blockrep's only native code: two system calls Node does not expose.
 *
 * lseek(2): the image readers need SEEK_DATA / SEEK_HOLE to find the holes of sparse raw files
 * without reading them, and SEEK_END to learn the size of a block device (fstat reports 0 there).
 * syncfs(2): a local repository writes chunks without an fsync each and makes them durable with
 * one syncfs of its file system before it publishes the manifest that refers to them.
 * Everything else stays in JavaScript. Node-API only, so one build serves every Node >= 20,
 * and the module is context-aware so worker threads may load it too.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <node_api.h>

/* Largest integer a JS number holds exactly (2^53 - 1). */
#define MAX_SAFE_INTEGER 9007199254740991.0

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_value code, msg, error, sys, errnum;
  const char *name = "EIO";
  switch (err) {
    case EBADF: name = "EBADF"; break;
    case EINVAL: name = "EINVAL"; break;
    case EOVERFLOW: name = "EOVERFLOW"; break;
    case ESPIPE: name = "ESPIPE"; break;
    case ENXIO: name = "ENXIO"; break;
    case EIO: name = "EIO"; break;
    case ENOSPC: name = "ENOSPC"; break;
    case EDQUOT: name = "EDQUOT"; break;
    case EROFS: name = "EROFS"; break;
    default: break;
  }
  char text[160];
  snprintf(text, sizeof text, "%s: %s, %s", name, strerror(err), syscall);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys);
  napi_set_named_property(env, error, "syscall", sys);
  napi_create_int32(env, -err, &errnum);
  napi_set_named_property(env, error, "errno", errnum);
  napi_throw(env, error);
  return NULL;
}

/*
 * seek(fd, offset, whence) -> new offset, or -1 when lseek fails with ENXIO (for SEEK_DATA:
 * no data at or after offset; for SEEK_HOLE: offset at or past the end). Other failures
 * throw an Error with a Node-style `code` (EINVAL when the file system lacks SEEK_DATA, ...).
 */
static napi_value js_seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, whence) takes three numbers");
    return NULL;
  }
  int32_t fd, whence;
  double offset;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_double(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int32(env, argv[2], &whence) != napi_ok) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, whence) takes three numbers");
    return NULL;
  }
  if (!(offset >= 0 && offset <= MAX_SAFE_INTEGER) || offset != (double)(int64_t)offset) {
    napi_throw_range_error(env, NULL, "seek: offset must be a safe non-negative integer");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)offset, whence);
  napi_value result;
  if (r < 0) {
    if (errno == ENXIO) {
      napi_create_double(env, -1, &result);
      return result;
    }
    return throw_errno(env, errno, "lseek");
  }
  napi_create_double(env, (double)r, &result);
  return result;
}

/* One syncfs(fd) on a thread of libuv's pool: it may take seconds, the event loop goes on. */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int err;
} syncfs_job;

static void syncfs_execute(napi_env env, void *data) {
  (void)env;
  syncfs_job *job = data;
  job->err = syncfs(job->fd) == 0 ? 0 : errno;
}

static void syncfs_complete(napi_env env, napi_status status, void *data) {
  syncfs_job *job = data;
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  if (status == napi_ok && job->err == 0) {
    napi_resolve_deferred(env, job->deferred, undefined);
  } else {
    /* throw_errno builds the error and throws it; take it back as the rejection. */
    napi_value error;
    bool pending = false;
    throw_errno(env, status == napi_ok ? job->err : EIO, "syncfs");
    napi_is_exception_pending(env, &pending);
    if (pending && napi_get_and_clear_last_exception(env, &error) == napi_ok) {
      napi_reject_deferred(env, job->deferred, error);
    } else {
      napi_reject_deferred(env, job->deferred, undefined);
    }
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

/*
 * syncfs(fd) -> Promise<void>: writes back everything dirty on the file system that holds fd
 * (data, inodes, folder entries) and waits for it; rejects with a Node-style `code` (EIO: a
 * write-back failed since fd was opened, Linux >= 5.8; ...).
 */
static napi_value js_syncfs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "syncfs(fd) takes a file descriptor");
    return NULL;
  }
  syncfs_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "syncfs: out of memory");
    return NULL;
  }
  job->fd = fd;
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "blockrep:syncfs", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, syncfs_execute, syncfs_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    free(job);
    napi_throw_error(env, NULL, "syncfs: cannot queue the work");
    return NULL;
  }
  return promise;
}

/*
 * release(arrayBuffer) -> true when detached: frees the memory of an ArrayBuffer nobody needs
 * any more now, instead of when V8 next collects (it counts memory outside its heap only
 * loosely, so a backup's dead chunk blobs pile up). Every view on it reads as empty afterwards:
 * the caller must own the whole buffer.
 */
static napi_value js_release(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_ab = false, detached = false;
  napi_value result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_is_arraybuffer(env, argv[0], &is_ab) != napi_ok || !is_ab) {
    napi_throw_type_error(env, NULL, "release(arrayBuffer) takes an ArrayBuffer");
    return NULL;
  }
  if (napi_is_detached_arraybuffer(env, argv[0], &detached) == napi_ok && !detached) {
    detached = napi_detach_arraybuffer(env, argv[0]) == napi_ok;
  } else {
    detached = false;
  }
  napi_get_boolean(env, detached, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn, value;
  napi_create_function(env, "seek", NAPI_AUTO_LENGTH, js_seek, NULL, &fn);
  napi_set_named_property(env, exports, "seek", fn);
  napi_create_int32(env, SEEK_END, &value);
  napi_set_named_property(env, exports, "SEEK_END", value);
  napi_create_int32(env, SEEK_DATA, &value);
  napi_set_named_property(env, exports, "SEEK_DATA", value);
  napi_create_int32(env, SEEK_HOLE, &value);
  napi_set_named_property(env, exports, "SEEK_HOLE", value);
  napi_create_function(env, "syncfs", NAPI_AUTO_LENGTH, js_syncfs, NULL, &fn);
  napi_set_named_property(env, exports, "syncfs", fn);
  napi_create_function(env, "release", NAPI_AUTO_LENGTH, js_release, NULL, &fn);
  napi_set_named_property(env, exports, "release", fn);
  return exports;
}
