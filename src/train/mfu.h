// Model FLOPs utilisation (MFU; PaLM, Chowdhery et al. 2022, appendix B): the FLOPs a training
// step needs (6 per parameter per token plus attention's, lt_model_train_flops_per_token) at the
// measured tokens/s, over what the devices could do at their peak dense bf16 rate.
#ifndef LT_MFU_H
#define LT_MFU_H

#include "core/config.h"
#include "core/tensor.h"

// The peak dense bf16 TFLOP/s of a GPU from its name as CUDA reports it ("NVIDIA H100 80GB
// HBM3"), from the vendors' data sheets (without sparsity); 0 for a name not in the table.
double lt_gpu_peak_tflops(const char *gpu_name);
// One device's peak for this run: run.peak_tflops when set, else the current GPU's (CUDA builds
// on a CUDA device), else 0 (no MFU).
double lt_run_peak_tflops(const lt_run_config *run, lt_device device);
// MFU of `n_devices` devices of `peak_tflops` each at `tokens_per_s` tokens per second of
// `flops_per_token`; NAN when the peak is unknown (0).
double lt_mfu(double tokens_per_s, double flops_per_token, double peak_tflops, int n_devices);

#endif
