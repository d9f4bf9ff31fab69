#include "model/params.h"

#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "parallel/mesh.h"

#ifdef LT_WITH_CUDA
#include "kernels/cuda/cuda_kernels.h"
#endif

// Parameters start on 64-element boundaries (256 bytes in f32) unless fused with the previous
// one: vector loads and cuBLASLt like aligned operands.
enum { PARAM_ALIGN = 64 };

const char *lt_param_group_name(lt_param_group group) {
  static const char *names[] = {"embed", "norm", "attn", "ffn", "head"};
  return group < LT_GROUP_COUNT ? names[group] : "?";
}

void lt_params_begin(lt_params *params, const lt_mesh *mesh) {
  *params = (lt_params){.mesh = mesh};
}

int lt_params_add(lt_params *params, lt_param *bind, const char *name, int ndim,
                  const int64_t *shape, lt_param_spec spec) {
  LT_ASSERT(ndim >= 1 && ndim <= LT_MAX_DIMS && strlen(name) < sizeof params->info[0].name);
  LT_ASSERT(!params->master); // registration ends when the buffers exist
  if (params->count == params->capacity) {
    int capacity = params->capacity ? 2 * params->capacity : 64;
    lt_param_info *grown = realloc(params->info, (size_t)capacity * sizeof *grown);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory registering parameter %s", name);
    params->info = grown;
    params->capacity = capacity;
  }
  if (spec.shard_length)
    LT_CHECK(spec.shard_dim >= 0 && spec.shard_dim < ndim && spec.shard_start >= 0 &&
                 spec.shard_start + spec.shard_length <= shape[spec.shard_dim],
             LT_ERR_INTERNAL, "parameter %s: shard [%lld, +%lld) of dim %d is outside its shape",
             name, (long long)spec.shard_start, (long long)spec.shard_length, spec.shard_dim);
  lt_param_info *p = &params->info[params->count++];
  *p = (lt_param_info){.ndim = ndim, .spec = spec, .bind = bind, .numel = 1};
  strcpy(p->name, name);
  for (int i = 0; i < ndim; i++) {
    p->logical_shape[i] = p->shape[i] = shape[i];
    if (spec.shard_length && i == spec.shard_dim) {
      p->shape[i] = spec.shard_length;
      p->slice_start[i] = spec.shard_start;
    }
    p->numel *= p->shape[i];
  }
  size_t offset = params->numel;
  if (!spec.fused_with_prev) offset = (offset + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
  p->offset = offset;
  params->numel = offset + (size_t)p->numel;
  return LT_OK;
}

static lt_tensor param_view(const lt_params *params, const lt_param_info *p, void *base,
                            lt_dtype dtype) {
  char *data = (char *)base + p->offset * lt_dtype_size(dtype);
  return lt_view(data, dtype, params->device, p->ndim, p->shape);
}

// Cuts the flat buffer into equal shards over the data-parallel ranks (padding its end with zeros
// so that they divide it) and chooses the part whose AdamW state this process keeps.
static void plan_shards(lt_params *params) {
  const lt_mesh *mesh = params->mesh;
  const size_t n_shards = mesh ? (size_t)mesh->dp_cp.size : 1;
  const size_t rank = mesh ? (size_t)mesh->dp_cp.rank : 0, quantum = PARAM_ALIGN * n_shards;
  params->numel = (params->numel + quantum - 1) / quantum * quantum;
  params->shard_numel = params->numel / n_shards;
  params->shard_start = rank * params->shard_numel;
  const bool zero = mesh && mesh->parallel.zero && n_shards > 1;
  params->state_start = zero ? params->shard_start : 0;
  params->state_numel = zero ? params->shard_numel : params->numel;
}

int lt_params_allocate(lt_params *params, lt_device device) {
  params->device = device;
  plan_shards(params);
  void *buffers[4] = {0};
  const char *what[4] = {"parameters", "gradients", "AdamW first moments", "AdamW second moments"};
  for (int i = 0; i < 4; i++) {
    size_t bytes = (i < 2 ? params->numel : params->state_numel) * sizeof(float);
    int rc = lt_device_alloc(device, bytes, what[i], &buffers[i]);
    if (rc) {
      for (int j = 0; j < i; j++) lt_device_free(device, buffers[j]);
      return rc;
    }
    LT_TRY(lt_device_memset0(device, buffers[i], bytes));
  }
  params->master = buffers[0], params->grad = buffers[1];
  params->adam_m = buffers[2], params->adam_v = buffers[3];
  params->compute = params->master;
  lt_dtype compute_dtype = LT_F32;
#ifdef LT_WITH_CUDA
  if (device == LT_CUDA) {
    LT_TRY(lt_device_alloc(device, params->numel * 2, "bf16 parameter copy", &params->compute));
    LT_TRY(lt_device_memset0(device, params->compute, params->numel * 2));
    compute_dtype = LT_BF16;
  }
#endif
  for (int i = 0; i < params->count; i++) {
    lt_param_info *p = &params->info[i];
    p->bind->value = param_view(params, p, params->compute, compute_dtype);
    p->bind->grad = param_view(params, p, params->grad, LT_F32);
  }
  return LT_OK;
}

int lt_params_init(lt_params *params, uint64_t seed) {
  lt_rng root = lt_rng_seed(seed);
  for (int n = 0; n < params->count; n++) {
    lt_param_info *p = &params->info[n];
    float *host = malloc((size_t)p->numel * sizeof(float));
    LT_CHECK(host, LT_ERR_MEMORY, "out of host memory initialising %s", p->name);
    uint64_t key = lt_rng_split_name(root, p->name).key;
    // The shard is (outer, length, inner) of the logical (outer, whole, inner) around its split
    // dimension: element (o, m, i) is logical element (o, start + m, i).
    int dim = p->spec.shard_length ? p->spec.shard_dim : 0;
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < dim; d++) outer *= p->shape[d];
    for (int d = dim + 1; d < p->ndim; d++) inner *= p->shape[d];
    const int64_t length = p->shape[dim], whole = p->logical_shape[dim],
                  start = p->slice_start[dim];
    for (int64_t o = 0, j = 0; o < outer; o++)
      for (int64_t m = 0; m < length; m++)
        for (int64_t i = 0; i < inner; i++, j++) {
          uint64_t logical = (uint64_t)((o * whole + start + m) * inner + i);
          switch (p->spec.init) {
          case LT_INIT_ZEROS:
            host[j] = 0.0f;
            break;
          case LT_INIT_ONES:
            host[j] = 1.0f;
            break;
          case LT_INIT_NORMAL:
            host[j] = p->spec.std * lt_rng_normal_at(key, logical);
            break;
          }
        }
    int rc = lt_device_copy(params->master + p->offset, params->device, host, LT_CPU,
                            (size_t)p->numel * sizeof(float));
    free(host);
    LT_TRY(rc);
  }
  return lt_params_sync_compute(params);
}

int lt_params_zero_grad(lt_params *params) {
  return lt_device_memset0(params->device, params->grad, params->numel * sizeof(float));
}

int lt_params_sync_compute(lt_params *params) {
#ifdef LT_WITH_CUDA
  if (params->device == LT_CUDA)
    return lt_cuda_f32_to_bf16(params->compute, params->master, params->numel);
#endif
  (void)params;
  return LT_OK;
}

bool lt_param_is_copy(const lt_params *params, const lt_param_info *p) {
  const lt_mesh *mesh = params->mesh;
  if (p->spec.pipeline_copy) return true;
  return mesh && p->spec.shard_length == 0 && mesh->coord[LT_AXIS_TP] != 0;
}

// Elements [lo, hi) of the sub-tensor at dimensions d.. whose indices along the dimensions before
// d are at[0..d) and whose element 0 is element `base` of the parameter.
static void split_boxes(const lt_param_info *p, int d, int64_t lo, int64_t hi, int64_t base,
                        int64_t *at, lt_param_box *boxes, int *n) {
  int64_t inner = 1;
  for (int k = d + 1; k < p->ndim; k++) inner *= p->shape[k];
  int64_t first = lo / inner, end = hi / inner; // rows of dimension d
  if (lo % inner) {                             // a partial row: split inside it
    at[d] = first;
    const int64_t stop = first == end ? hi - first * inner : inner;
    split_boxes(p, d + 1, lo - first * inner, stop, base + first * inner, at, boxes, n);
    if (first == end) return;
    first++;
  }
  if (end > first) { // whole rows: one box
    lt_param_box *b = &boxes[(*n)++];
    b->start = base + first * inner, b->numel = (end - first) * inner;
    for (int k = 0; k < p->ndim; k++) {
      const int64_t local = k < d ? at[k] : k == d ? first : 0;
      b->offset[k] = p->slice_start[k] + local;
      b->extent[k] = k < d ? 1 : k == d ? end - first : p->shape[k];
    }
  }
  if (hi % inner) { // a partial last row
    at[d] = end;
    split_boxes(p, d + 1, 0, hi - end * inner, base + end * inner, at, boxes, n);
  }
}

int lt_param_boxes(const lt_param_info *p, int64_t lo, int64_t hi, lt_param_box *boxes) {
  int n = 0;
  int64_t at[LT_MAX_DIMS] = {0};
  if (lo < hi) split_boxes(p, 0, lo, hi, 0, at, boxes, &n);
  return n;
}

const lt_param_info *lt_params_find(const lt_params *params, const char *name) {
  for (int i = 0; i < params->count; i++)
    if (strcmp(params->info[i].name, name) == 0) return &params->info[i];
  return NULL;
}

void lt_params_free(lt_params *params) {
  float *buffers[4] = {params->master, params->grad, params->adam_m, params->adam_v};
  if (params->compute != params->master) lt_device_free(params->device, params->compute);
  for (int i = 0; i < 4; i++) lt_device_free(params->device, buffers[i]);
  free(params->info);
  *params = (lt_params){0};
}
