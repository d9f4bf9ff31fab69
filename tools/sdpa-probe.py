"""Which kernels PyTorch's scaled_dot_product_attention runs, and how fast each backend is.

Run on the GPU machine: python3 tools/sdpa-probe.py B H T D  (causal, bf16; e.g. 2 12 16384 64,
the 135M model's attention). Prints torch.profiler's kernel table for the default backend's
forward and backward, then each backend's forward and backward times (CUDA events, mean of 10).
Under Nsight Compute it gives the kernels' launch shapes (bench/results/h100-sdpa-kernels.log).
"""
import torch, torch.nn.functional as F, sys, time
from torch.profiler import profile, ProfilerActivity
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())
B,H,T,D = [int(x) for x in sys.argv[1:5]]
q,k,v = [torch.randn(B,H,T,D,device="cuda",dtype=torch.bfloat16,requires_grad=True) for _ in range(3)]
do = torch.randn(B,H,T,D,device="cuda",dtype=torch.bfloat16)
from torch.nn.attention import sdpa_kernel, SDPBackend
def run(n):
    for _ in range(n):
        o = F.scaled_dot_product_attention(q,k,v,is_causal=True); o.backward(do)
run(3); torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    run(5); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=140))
for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
    try:
        with sdpa_kernel(be):
            run(3); torch.cuda.synchronize()
            e0,e1,e2 = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            tf=tb=0
            for _ in range(10):
                e0.record(); o = F.scaled_dot_product_attention(q,k,v,is_causal=True); e1.record(); o.backward(do); e2.record(); torch.cuda.synchronize()
                tf += e0.elapsed_time(e1); tb += e1.elapsed_time(e2)
            print(f"{name}: fwd {tf/10:.3f} ms bwd {tb/10:.3f} ms")
    except Exception as ex:
        print(name, "failed", str(ex)[:200])
