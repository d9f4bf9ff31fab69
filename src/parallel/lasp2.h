// LASP-2 (Sun et al. 2025, "LASP-2: Rethinking Sequence Parallelism for Linear Attention and Its
// Hybrid", arXiv:2502.07563): linear and lightning attention over a sequence split across the cp
// ranks of a context-parallel group, with one all-gather of memory states per pass.
//
// Forward (the paper's Algorithm 1, with decay): each rank computes the states of its two chunks,
// M_c = sum_j lambda^(end_c - 1 - j) k_j^T v_j (lt_linear_attn_state, d x e per head whatever the
// chunk's length); one all-gather gives every chunk's state to every rank; each rank combines the
// states before each of its chunks into that chunk's prefix,
//   P_c = sum_{c' < c} lambda^(start_c - end_c') M_c'     (decay-weighted by distance)
// computed as the scan P_{c+1} = lambda^C P_c + M_c over chunks of C tokens; then the chunk's
// output is its intra-chunk attention plus the prefix's term (lt_linear_attn_fwd with P_c).
// Backward (Algorithm 2): the chunks' prefix gradients dP_c come out of lt_linear_attn_bwd; one
// all-gather; the suffix scan G_c = dP_c + lambda^C G_{c+1} gives each state's gradient
// dM_c = G_{c+1}, which lt_linear_attn_state_bwd turns into dk, dv.
//
// Zigzag: a rank's chunks r and 2cp-1-r are not adjacent, so each is its own sequence of C
// tokens: (B, 2C) tokens are viewed as (2B, C) rows, one kernel call for both.
// Documents: a state keeps only its chunk's last document, and the scans stop where a document
// starts: P_{c+1} keeps lambda^C P_c only when chunk c lies in the document of P_c (as the kernel
// carries its state from block to block). A chunk whose document starts at its first token reads
// no prefix (its prefix belongs to another document); one whose document began earlier, on any
// rank, gets that document's prefix.
#ifndef LT_LASP2_H
#define LT_LASP2_H

#include "layers/layer.h"
#include "parallel/mesh.h"

typedef struct lt_lasp2 lt_lasp2;

// *out = NULL when the mesh has no cp group: every function below then runs the single-device
// kernels with no prefix. log_decay: (n_heads) log lambda_h on the host, copied; NULL for none.
int lt_lasp2_create(lt_lasp2 **out, const lt_mesh *mesh, int n_heads, const float *log_decay);
void lt_lasp2_destroy(lt_lasp2 *lasp);
// Memory for micro-batches of (p->B, p->T) local tokens (T even) with hq query heads, key width d
// and value width e: the chunks' prefixes are saved (p->acts), the rest is scratch taken after
// everything else the layer took.
int lt_lasp2_plan(lt_lasp2 *lasp, const lt_plan *p, int hq, int d, int e);
// As lt_linear_attn_fwd on this rank's tokens as part of the whole sequence. spec: the local
// tokens' documents (B, T) and the decay; its prefix_doc is LASP-2's to set.
int lt_lasp2_forward(lt_lasp2 *lasp, lt_ctx *ctx, lt_tensor o, lt_tensor q, lt_tensor k,
                     lt_tensor v, const lt_linear_attn_spec *spec);
// As lt_linear_attn_bwd: dq, dk, dv += the gradients, given dout. Runs after the forward of the
// same micro-batch (it reads the prefixes the forward saved).
int lt_lasp2_backward(lt_lasp2 *lasp, lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                      lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v,
                      const lt_linear_attn_spec *spec);

#endif
