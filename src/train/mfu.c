#include "train/mfu.h"

#include <math.h>
#include <string.h>

#ifdef LT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

// Dense bf16 tensor-core TFLOP/s. More specific names first: the first entry whose text is in the
// device name wins.
static const struct {
  const char *name;
  double tflops;
} peaks[] = {
    {"GH200", 989.4},     {"H200 NVL", 835.0}, {"H200", 989.4}, {"H100 NVL", 835.0},
    {"H100 PCIe", 756.0}, {"H100", 989.4},     {"H800", 989.4}, {"B200", 2250.0},
    {"B100", 1750.0},     {"A100", 312.0},     {"A800", 312.0}, {"A30", 165.0},
    {"L40S", 362.0},      {"L40", 181.0},      {"L4", 121.0},   {"A10G", 70.0},
    {"A10", 125.0},
};

double lt_gpu_peak_tflops(const char *gpu_name) {
  if (!gpu_name) return 0;
  for (size_t i = 0; i < sizeof peaks / sizeof peaks[0]; i++)
    if (strstr(gpu_name, peaks[i].name)) return peaks[i].tflops;
  return 0;
}

double lt_run_peak_tflops(const lt_run_config *run, lt_device device) {
  if (run->peak_tflops > 0) return run->peak_tflops;
#ifdef LT_WITH_CUDA
  struct cudaDeviceProp prop;
  int index;
  if (device == LT_CUDA && cudaGetDevice(&index) == cudaSuccess &&
      cudaGetDeviceProperties(&prop, index) == cudaSuccess)
    return lt_gpu_peak_tflops(prop.name);
#endif
  (void)device;
  return 0;
}

double lt_mfu(double tokens_per_s, double flops_per_token, double peak_tflops, int n_devices) {
  if (peak_tflops <= 0 || n_devices < 1) return NAN;
  return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * n_devices);
}
