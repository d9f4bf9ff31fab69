// Helpers for the GPU tests: skipping where no GPU is usable, host f32 data to and from device
// tensors of any dtype, fresh random inputs, and error norms.
//
// Every check draws fresh inputs: the seed comes from the clock (or LT_TEST_SEED, to replay a
// failure) and is printed once per program.
#ifndef LT_GPU_TESTING_H
#define LT_GPU_TESTING_H

#include <stdbool.h>

#include "core/config.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/params.h"
#include "testing.h"

// Skips the calling test (cmocka skip()) when no GPU is usable.
#define SKIP_WITHOUT_GPU()                                                                         \
  do {                                                                                             \
    if (!lt_gpu_available()) skip();                                                               \
  } while (0)

bool lt_gpu_available(void);
// Whether the GPU is a Hopper (where the wgmma kernels run).
bool lt_gpu_hopper(void);
// The contexts the kernel tests compare: the CPU reference (all cores) and the GPU where usable;
// cmocka's group setup and teardown make and end them.
extern lt_ctx lt_test_cpu, lt_test_gpu;
int lt_gpu_group_setup(void **state);
int lt_gpu_group_teardown(void **state);
// The next seed of this program's sequence.
uint64_t lt_gpu_next_seed(void);
// n normal values of standard deviation std, rounded to bf16 when `bf16` (the CPU reference then
// sees exactly what the GPU sees); the caller frees.
float *lt_gpu_random(int64_t n, float std, bool bf16);
// Rounds to the nearest bf16, in place.
void lt_gpu_round_bf16(float *x, int64_t n);
// A device tensor of `dtype` holding the host values (converted); freed by lt_gpu_free_all.
lt_tensor lt_gpu_upload(const float *host, lt_dtype dtype, int ndim, const int64_t *shape);
lt_tensor lt_gpu_upload_i32(const int32_t *host, int ndim, const int64_t *shape);
// A device tensor's values as f32 on the host; the caller frees.
float *lt_gpu_fetch(lt_tensor t);
void lt_gpu_free_all(void);
// ||a - b|| / ||b|| (NaN anywhere gives NaN, which fails every comparison).
double lt_gpu_rel_l2(const float *a, const float *b, int64_t n);
// Fails the test with the name and the error when rel_l2(got, want) is not below tol; prints it.
void lt_gpu_expect_close(const char *what, const float *got, const float *want, int64_t n,
                         double tol);

// Prints each parameter whose gradient on the GPU (host copy g_gpu) is more than 1e-2 (relative
// L2) from the CPU's (g_cpu), and the worst; returns the worst error.
double lt_gpu_print_gradient_errors(const lt_params *p, const float *g_gpu, const float *g_cpu);
// One forward and backward of model m on batch b: the mean loss over its n_targets targets, and
// the gradients left (not accumulated) in the model's buffer.
double lt_gpu_loss_and_grads(lt_model *m, lt_ctx *ctx, const lt_batch *b, double n_targets);
// The end-to-end tests' model: 128 wide, 2 layers, 2 query heads of 64 on 1 key/value head,
// SwiGLU of 256, scaled init of std 0.02, the default (softmax) attention; LT_GPU_SMALL_VOCAB is
// the vocabulary the tests' datasets use.
#define LT_GPU_SMALL_VOCAB 512
lt_model_config lt_gpu_small_model(void);
// An HDF5 dataset at path of n_tokens random tokens below LT_GPU_SMALL_VOCAB in documents of 1 to
// 200 tokens, for the trainer.
void lt_gpu_write_dataset(const char *path, int64_t n_tokens);
// Every parameter's gradient of one step on the GPU (host copy g_gpu) against the CPU's (g_cpu),
// laid out as the parameter table p says: prints the parameters that differ, and fails where any
// parameter's relative L2 error reaches worst_tol or the whole gradient's 2e-2. With g_noisy (or
// NULL), the CPU's gradient after bf16-sized perturbations of its weights
// (lt_gpu_noisiest_gradients), a parameter whose gradient they move by s gets
// max(worst_tol, LT_GPU_NOISE_FACTOR * s)
// instead (the whole gradient likewise): some batches make a gradient far more sensitive to the
// weights than others, and bf16 rounds the GPU's weights and activations by that much.
void lt_gpu_expect_gradients_within(const lt_params *p, const float *g_gpu, const float *g_cpu,
                                    const float *g_noisy, double worst_tol);
// Multiplies each x[i] by 1 + u, u uniform in (-2^-8, 2^-8) from seed: the size of bf16's
// rounding (8 significant bits).
void lt_gpu_perturb_like_bf16(float *x, int64_t n, uint64_t seed);
// How many perturbations lt_gpu_noisiest_gradients tries. One is a noisy estimate of how far bf16
// moves a gradient: at LT_TEST_SEED=1795560178, five perturbations moved the lightning model's
// layers.0.ffn_norm gradient by 0.028, 0.025, 0.032, 0.019 and 0.044, and the H100's differed by
// 0.077, 2.7 times the first (which alone made the test fail at that seed) but 1.75 times the
// largest.
#define LT_GPU_PERTURBATIONS 5
// The CPU's gradients of model m on batch b after each of LT_GPU_PERTURBATIONS perturbations of
// its master weights (lt_gpu_perturb_like_bf16 of seeds seed, seed + 1, ...): for each parameter,
// the slice of the one that moved furthest from g_cpu, into g_noisy. The weights are restored.
void lt_gpu_noisiest_gradients(lt_model *m, lt_ctx *ctx, const lt_batch *b, double n_targets,
                               const float *g_cpu, float *g_noisy, uint64_t seed);
// How many times the CPU's own sensitivity to those perturbations (the furthest of them) a GPU
// gradient may differ: an H100's errors were 1.5 to 2.0 times it in every parameter of the
// lightning model, for the worst-conditioned batches seen (seeds 1795517677 and 1795560178) and
// for ordinary ones.
#define LT_GPU_NOISE_FACTOR 2.5
// The trainer's losses over `steps` steps of cfg (its run.device set to each in turn) from the
// same initial parameters on the CPU and the GPU agree within 1e-3 relative, and, when aux_tol > 0,
// the auxiliary losses (positive) within aux_tol relative.
void lt_gpu_expect_trainer_matches_cpu(lt_config *cfg, int steps, double aux_tol);

#endif
