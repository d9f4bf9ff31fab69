// The parameter table: every parameter's logical name, shape and init, with the values,
// gradients and AdamW moments each held in one flat buffer (a view per parameter). One buffer per
// kind is what makes bucketed all-reduce, ZeRO sharding and checkpoint I/O simple.
//
// Layers register their parameters while the model is built (lt_params_add), the table then
// allocates the buffers and binds each layer's lt_param views (lt_params_allocate), and
// lt_params_init fills them from the seed.
#ifndef LT_PARAMS_H
#define LT_PARAMS_H

#include "core/rng.h"
#include "core/tensor.h"

// What a layer holds: the parameter as the kernels see it and its gradient.
typedef struct lt_param {
  lt_tensor value; // f32 on the CPU (the master copy itself); bf16 compute copy on CUDA
  lt_tensor grad;  // f32
} lt_param;

// Groups choose weight decay and can be frozen as a whole.
typedef enum lt_param_group {
  LT_GROUP_EMBED,
  LT_GROUP_NORM,
  LT_GROUP_ATTN,
  LT_GROUP_FFN,
  LT_GROUP_HEAD,
  LT_GROUP_COUNT
} lt_param_group;

typedef enum lt_init_kind { LT_INIT_ZEROS, LT_INIT_ONES, LT_INIT_NORMAL } lt_init_kind;

typedef struct lt_param_spec {
  lt_init_kind init;
  float std; // for LT_INIT_NORMAL
  lt_param_group group;
  bool fused_with_prev; // laid out right after the previous parameter with no padding, so the
                        // two can be read as one matrix (q|k|v, gate|up)
  // Tensor or expert parallelism: this process holds indices [shard_start, shard_start +
  // shard_length) of dimension shard_dim of the logical tensor. shard_length 0: the whole tensor.
  int shard_dim;
  int64_t shard_start, shard_length;
  // Pipeline parallelism: another stage holds this same parameter too (a tied embedding's copy on
  // the last stage, read by the LM head). Its gradient is summed with that stage's, so both copies
  // take the same update; the gradient norm and checkpoints count the first stage's alone.
  bool pipeline_copy;
} lt_param_spec;

typedef struct lt_param_info {
  char name[96];
  int ndim;
  int64_t shape[LT_MAX_DIMS];         // what this process holds (its shard)
  int64_t logical_shape[LT_MAX_DIMS]; // the whole tensor, as checkpoints store it
  int64_t slice_start[LT_MAX_DIMS];   // where the shard sits in the whole tensor
  int64_t numel;                      // of the shard
  size_t offset;                      // in elements, into each flat buffer
  lt_param_spec spec;
  lt_param *bind; // the layer's handle, filled by lt_params_allocate
} lt_param_info;

typedef struct lt_mesh lt_mesh;

typedef struct lt_params {
  const lt_mesh *mesh; // how the model is split over processes (layers read it when they
                       // register their shards); NULL for a single process
  lt_param_info *info;
  int count, capacity;
  size_t numel; // elements in each flat buffer, padding included: a multiple of 64 * dp * cp
  // The flat buffer cut into dp * cp equal shards, one per data-parallel rank (the ranks that
  // hold the same parameters: mesh->dp_cp). This rank's is [shard_start, shard_start +
  // shard_numel): it computes that part of the gradient norm and writes that part to
  // checkpoints; under ZeRO-1 it also owns that part's AdamW state and update. A parameter may
  // straddle two shards.
  size_t shard_start, shard_numel;
  // The part of the flat buffer whose AdamW moments this process keeps: all of it, or its shard
  // under ZeRO-1 (mesh->zero). adam_m[i] and adam_v[i] belong to element state_start + i.
  size_t state_start, state_numel;
  lt_device device;
  float *master; // f32 weights (updated by the optimizer)
  float *grad;   // f32 gradients
  float *adam_m, *adam_v;
  void *compute; // what the kernels read: == master on the CPU, a bf16 copy on CUDA
} lt_params;

// Elements [start, start + numel) of a parameter's data (row-major, what this process holds) as
// a box of the logical tensor: it starts at `offset` and spans `extent` along each dimension.
typedef struct lt_param_box {
  int64_t start, numel;
  int64_t offset[LT_MAX_DIMS], extent[LT_MAX_DIMS];
} lt_param_box;
#define LT_PARAM_MAX_BOXES (2 * LT_MAX_DIMS - 1)

const char *lt_param_group_name(lt_param_group group);

void lt_params_begin(lt_params *params, const lt_mesh *mesh);
// `shape` is the logical shape; spec.shard_* say which slice this process holds.
int lt_params_add(lt_params *params, lt_param *bind, const char *name, int ndim,
                  const int64_t *shape, lt_param_spec spec);
int lt_params_allocate(lt_params *params, lt_device device);
// Fills every parameter from `seed`: the value of element i of the whole (logical) tensor "name"
// depends only on (seed, name, i), so every parallel layout builds the same model: a shard holds
// exactly the numbers of its slice of the unsharded tensor.
int lt_params_init(lt_params *params, uint64_t seed);
int lt_params_zero_grad(lt_params *params);
// After the optimizer changed master: refresh the compute copy (a no-op on the CPU).
int lt_params_sync_compute(lt_params *params);
const lt_param_info *lt_params_find(const lt_params *params, const char *name);
void lt_params_free(lt_params *params);

// Whether this process's parameter p is a copy of one that another process also holds whole and
// counts (in the gradient norm) and writes (in checkpoints): a tensor-parallel replica on a tp
// rank other than the first, or the last pipeline stage's copy of a tied embedding.
bool lt_param_is_copy(const lt_params *params, const lt_param_info *p);

// Elements [lo, hi) of p's data (0 <= lo < hi <= p->numel) as consecutive boxes of the logical
// tensor: a partial row, whole rows, a partial row, at each dimension. Returns how many (at most
// LT_PARAM_MAX_BOXES). This is how a ZeRO shard's slice of a parameter goes to a checkpoint.
int lt_param_boxes(const lt_param_info *p, int64_t lo, int64_t hi, lt_param_box *boxes);

#endif
