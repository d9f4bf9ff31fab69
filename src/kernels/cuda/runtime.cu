// The CUDA context (device choice, stream, cuBLASLt handle, workspaces), device memory for
// core/device.c, and the error messages every CUDA op reports through.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

extern "C" {
#include "core/device.h"
#include "kernels/cuda/cuda_runtime_glue.h"
}

enum {
  BLAS_WORKSPACE_BYTES = 32 << 20, // cuBLASLt's recommendation for Hopper
  SCRATCH_BYTES = 64 << 20,
};

int lt_cuda_fail(cudaError_t err, const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  cudaGetLastError(); // a launch error is sticky until read: leave the next op a clean slate
  return lt_fail(LT_ERR_DEVICE, "CUDA error in %s: %s (%s)", what, cudaGetErrorString(err),
                 cudaGetErrorName(err));
}

// The profile: an event after every op; the time between consecutive events is the later op's
// (launch gaps included), summed per op and operand shapes.
enum { PROFILE_MARKS = 4096, PROFILE_KEYS = 512 };

typedef struct profile_total {
  char key[160];
  double ms;
  long calls;
} profile_total;

struct cuda_profile {
  cudaEvent_t events[PROFILE_MARKS];
  int keys_of[PROFILE_MARKS]; // index into totals of the op each event ends
  int n_marks;
  profile_total totals[PROFILE_KEYS];
  int n_totals;
};

static int profile_key(struct cuda_profile *pr, const char *key) {
  for (int i = 0; i < pr->n_totals; i++)
    if (strcmp(pr->totals[i].key, key) == 0) return i;
  if (pr->n_totals == PROFILE_KEYS) return PROFILE_KEYS - 1; // the rest lumped into the last
  snprintf(pr->totals[pr->n_totals].key, sizeof pr->totals[0].key, "%s", key);
  return pr->n_totals++;
}

// Adds the recorded intervals to the totals, keeping the last event as the next start.
static void profile_flush(struct cuda_profile *pr) {
  if (pr->n_marks == 0) return;
  cudaEventSynchronize(pr->events[pr->n_marks - 1]);
  for (int i = 1; i < pr->n_marks; i++) {
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, pr->events[i - 1], pr->events[i]);
    pr->totals[pr->keys_of[i]].ms += ms;
    pr->totals[pr->keys_of[i]].calls++;
  }
  cudaEvent_t last = pr->events[pr->n_marks - 1];
  pr->events[pr->n_marks - 1] = pr->events[0];
  pr->events[0] = last;
  pr->n_marks = 1;
}

static void profile_mark(lt_cuda_state *st, const char *key) {
  struct cuda_profile *pr = st->profile;
  if (pr->n_marks == PROFILE_MARKS) profile_flush(pr);
  pr->keys_of[pr->n_marks] = profile_key(pr, key);
  cudaEventRecord(pr->events[pr->n_marks++], st->stream);
}

void lt_cuda_profile_mark(lt_ctx *ctx, const char *what) {
  lt_cuda_state *st = cuda_state(ctx);
  if (st->profile) profile_mark(st, what);
}

static int by_time(const void *x, const void *y) {
  double a = ((const profile_total *)x)->ms, b = ((const profile_total *)y)->ms;
  return (a < b) - (a > b);
}

void lt_cuda_profile_reset(lt_ctx *ctx) {
  struct cuda_profile *pr = cuda_state(ctx)->profile;
  if (!pr) return;
  profile_flush(pr);
  for (int i = 0; i < pr->n_totals; i++) pr->totals[i].ms = 0.0, pr->totals[i].calls = 0;
}

static void profile_report(struct cuda_profile *pr) {
  profile_flush(pr);
  qsort(pr->totals, (size_t)pr->n_totals, sizeof pr->totals[0], by_time);
  double total = 0.0;
  for (int i = 0; i < pr->n_totals; i++) total += pr->totals[i].ms;
  fprintf(stderr, "CUDA profile (LT_CUDA_PROFILE): %.1f ms of GPU time in %d kinds of op\n", total,
          pr->n_totals);
  for (int i = 0; i < pr->n_totals; i++)
    if (pr->totals[i].calls)
      fprintf(stderr, "%9.2f ms %5.1f%% %6ld calls  %s\n", pr->totals[i].ms,
              100.0 * pr->totals[i].ms / (total > 0 ? total : 1), pr->totals[i].calls,
              pr->totals[i].key);
}

int lt_cuda_launched(lt_cuda_state *st, const char *op, lt_tensor a, lt_tensor b) {
  if (st->profile) {
    char key[160], da[64], db[64];
    snprintf(key, sizeof key, "%s %s, %s", op, lt_tensor_desc(a, da, sizeof da),
             lt_tensor_desc(b, db, sizeof db));
    profile_mark(st, key);
  }
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && st->sync_each_op) err = cudaStreamSynchronize(st->stream);
  if (err == cudaSuccess) return LT_OK;
  char da[96], db[96];
  return lt_cuda_fail(err, "%s on %s, %s", op, lt_tensor_desc(a, da, sizeof da),
                      lt_tensor_desc(b, db, sizeof db));
}

int lt_cuda_unsupported(const char *op, const char *what, lt_tensor a, lt_tensor b) {
  char da[96], db[96];
  return lt_fail(LT_ERR_INTERNAL, "internal error: %s on CUDA: %s: %s, %s (please report this)", op,
                 what, lt_tensor_desc(a, da, sizeof da), lt_tensor_desc(b, db, sizeof db));
}

int lt_cuda_scratch(lt_cuda_state *st, size_t bytes, const char *op, void **out) {
  *out = st->scratch;
  if (bytes <= st->scratch_bytes) return LT_OK;
  return lt_fail(LT_ERR_INTERNAL, "internal error: %s needs %zu bytes of CUDA workspace, %zu exist",
                 op, bytes, st->scratch_bytes);
}

bool lt_cuda_scratch_reserve(lt_cuda_state *st, size_t bytes) {
  if (bytes <= st->scratch_bytes) return true;
  void *grown = nullptr;
  if (cudaMalloc(&grown, bytes) != cudaSuccess) {
    cudaGetLastError(); // out of memory is not sticky: the caller takes another path
    return false;
  }
  if (cudaStreamSynchronize(st->stream) != cudaSuccess) { // queued kernels may use the old one
    cudaFree(grown); // the error stays for the next op to report
    return false;
  }
  lt_cuda_free(st->scratch);
  st->scratch = grown, st->scratch_bytes = bytes;
  return true;
}

int lt_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int lt_cuda_compute_major(void) {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major;
}

// The node-local rank from the launcher's environment (mpirun, srun, torchrun-style), or 0.
static int local_rank(void) {
  const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID",
                        "LOCAL_RANK"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    if (v && *v) return atoi(v);
  }
  return 0;
}

int lt_cuda_ctx_init(lt_ctx *ctx) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();
    return lt_fail(LT_ERR_DEVICE,
                   "run.device is cuda but no GPU is usable (%s): check the driver and "
                   "CUDA_VISIBLE_DEVICES, or set run.device: cpu",
                   err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device found");
  }
  lt_cuda_state *st = (lt_cuda_state *)calloc(1, sizeof *st);
  LT_CHECK(st, LT_ERR_MEMORY, "out of host memory creating the CUDA context");
  ctx->cuda = st;
  st->device = local_rank() % count;
  const char *sync = getenv("LT_CUDA_SYNC"), *profile = getenv("LT_CUDA_PROFILE");
  st->sync_each_op = sync && strcmp(sync, "0") != 0;
  CUDA_TRY(cudaSetDevice(st->device), "cudaSetDevice(%d) of %d GPUs", st->device, count);
  CUDA_TRY(cudaDeviceGetAttribute(&st->n_sms, cudaDevAttrMultiProcessorCount, st->device),
           "reading the multiprocessor count of GPU %d", st->device);
  CUDA_TRY(cudaStreamCreateWithFlags(&st->stream, cudaStreamDefault), "creating a stream");
  CUDA_TRY(cudaStreamCreateWithFlags(&st->side, cudaStreamNonBlocking), "creating the side stream");
  CUDA_TRY(cudaEventCreateWithFlags(&st->fork, cudaEventDisableTiming),
           "creating the side stream's events");
  CUDA_TRY(cudaEventCreateWithFlags(&st->join, cudaEventDisableTiming),
           "creating the side stream's events");
  cublasStatus_t bs = cublasLtCreate(&st->blas);
  if (bs != CUBLAS_STATUS_SUCCESS)
    return lt_fail(LT_ERR_DEVICE, "cuBLASLt error in cublasLtCreate: %s (%s)",
                   cublasLtGetStatusString(bs), cublasLtGetStatusName(bs));
  st->blas_workspace_bytes = BLAS_WORKSPACE_BYTES;
  st->scratch_bytes = SCRATCH_BYTES;
  LT_TRY(lt_cuda_alloc(st->blas_workspace_bytes, "the cuBLASLt workspace", &st->blas_workspace));
  LT_TRY(lt_cuda_alloc(st->scratch_bytes, "the kernels' workspace", &st->scratch));
  CUDA_TRY(cudaMallocHost((void **)&st->host_result, sizeof(double)), "cudaMallocHost of %zu bytes",
           sizeof(double));
  if (profile && strcmp(profile, "0") != 0) {
    st->profile = (struct cuda_profile *)calloc(1, sizeof *st->profile);
    LT_CHECK(st->profile, LT_ERR_MEMORY, "out of host memory for the CUDA profile");
    for (int i = 0; i < PROFILE_MARKS; i++)
      CUDA_TRY(cudaEventCreate(&st->profile->events[i]), "creating profile events");
  }
  return lt_cuda_attn_pick_kernels(st);
}

void lt_cuda_ctx_destroy(lt_ctx *ctx) {
  lt_cuda_state *st = cuda_state(ctx);
  if (!st) return;
  if (st->stream) cudaStreamSynchronize(st->stream);
  if (st->side) cudaStreamSynchronize(st->side);
  if (st->profile) {
    profile_report(st->profile);
    for (int i = 0; i < PROFILE_MARKS; i++) cudaEventDestroy(st->profile->events[i]);
    free(st->profile);
  }
  lt_cuda_matmul_plans_free(st);
  lt_cuda_gemm_blas_free(st);
  if (st->blas) cublasLtDestroy(st->blas);
  lt_cuda_free(st->blas_workspace);
  lt_cuda_free(st->scratch);
  if (st->host_result) cudaFreeHost(st->host_result);
  for (int i = 0; i < LT_CUDA_UPLOAD_SLOTS; i++) {
    if (st->uploads[i].host) cudaFreeHost(st->uploads[i].host);
    if (st->uploads[i].copied) cudaEventDestroy(st->uploads[i].copied);
  }
  if (st->side) cudaStreamDestroy(st->side);
  if (st->fork) cudaEventDestroy(st->fork);
  if (st->join) cudaEventDestroy(st->join);
  if (st->stream) cudaStreamDestroy(st->stream);
  cudaGetLastError();
  free(st);
  ctx->cuda = NULL;
}

// The batch's tokens, targets and positions go up this way at every micro-batch. A cudaMemcpy
// (lt_device_copy) would wait for every kernel queued before it and leave the GPU idle until the
// host queued the next; a copy from pinned memory in stream order leaves the queue full. src is
// copied into the next staging slot first, so the caller may reuse it at once; the slot itself is
// reused only after the stream has passed its previous copy (the host waits for that, at worst).
int lt_cuda_upload(lt_ctx *ctx, lt_tensor dst, const void *src) {
  lt_cuda_state *st = cuda_state(ctx);
  const size_t bytes = lt_nbytes(dst);
  if (bytes == 0) return LT_OK;
  lt_cuda_upload_slot *u = &st->uploads[st->next_upload];
  st->next_upload = (st->next_upload + 1) % LT_CUDA_UPLOAD_SLOTS;
  if (u->copied)
    CUDA_TRY(cudaEventSynchronize(u->copied), "an upload queued before this one");
  else
    CUDA_TRY(cudaEventCreateWithFlags(&u->copied, cudaEventDisableTiming),
             "creating an upload's event");
  if (u->bytes < bytes) {
    if (u->host) cudaFreeHost(u->host);
    u->host = NULL, u->bytes = 0;
    CUDA_TRY(cudaMallocHost(&u->host, bytes), "cudaMallocHost of %zu bytes to stage an upload",
             bytes);
    u->bytes = bytes;
  }
  memcpy(u->host, src, bytes);
  CUDA_TRY(cudaMemcpyAsync(dst.data, u->host, bytes, cudaMemcpyHostToDevice, st->stream),
           "an upload of %zu bytes", bytes);
  CUDA_TRY(cudaEventRecord(u->copied, st->stream), "recording an upload's event");
  return lt_cuda_launched(st, "upload", dst, dst);
}

int lt_cuda_sync(lt_ctx *ctx) {
  CUDA_TRY(cudaStreamSynchronize(cuda_state(ctx)->stream),
           "a kernel queued before this wait (set LT_CUDA_SYNC=1 to find which)");
  return LT_OK;
}

int lt_cuda_alloc(size_t bytes, const char *what, void **out) {
  *out = NULL;
  cudaError_t err = cudaMalloc(out, bytes);
  if (err == cudaSuccess) return LT_OK;
  *out = NULL;
  cudaGetLastError();
  if (err != cudaErrorMemoryAllocation)
    return lt_cuda_fail(err, "cudaMalloc of %zu bytes for %s", bytes, what);
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaGetLastError();
  char asked[32], free_s[32], total_s[32];
  return lt_fail(LT_ERR_MEMORY,
                 "out of GPU memory allocating %s for %s (%s free of %s): lower "
                 "train.micro_batch or train.seq_len, or enable train.recompute",
                 lt_format_bytes((double)bytes, asked, sizeof asked), what,
                 lt_format_bytes((double)free_bytes, free_s, sizeof free_s),
                 lt_format_bytes((double)total_bytes, total_s, sizeof total_s));
}

void lt_cuda_free(void *ptr) {
  if (ptr) cudaFree(ptr);
}

int lt_cuda_memset0(void *ptr, size_t bytes) {
  CUDA_TRY(cudaMemset(ptr, 0, bytes), "cudaMemset of %zu bytes", bytes);
  return LT_OK;
}

int lt_cuda_memcpy(void *dst, bool dst_on_device, const void *src, bool src_on_device,
                   size_t bytes) {
  cudaMemcpyKind kind = dst_on_device
                            ? (src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                            : (src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  // The legacy default stream waits for the contexts' streams, so a copy sees every kernel queued
  // before it; the device-wide sync makes the copy complete (and its errors show) before return.
  CUDA_TRY(cudaMemcpy(dst, src, bytes, kind), "cudaMemcpy of %zu bytes (%s to %s)", bytes,
           src_on_device ? "device" : "host", dst_on_device ? "device" : "host");
  CUDA_TRY(cudaDeviceSynchronize(), "a kernel queued before a copy of %zu bytes", bytes);
  return LT_OK;
}
