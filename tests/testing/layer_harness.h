// Sublayers (token mixers, feed-forwards) built for tests outside a model.
#ifndef LT_LAYER_HARNESS_H
#define LT_LAYER_HARNESS_H

#include "layers/layer.h"

typedef struct lt_test_layer {
  lt_layer *layer;
  lt_params params;
  lt_arena acts, scratch;
} lt_test_layer;

// Sizes the layer's memory for batches of B sequences of T tokens (measuring, then for real) and
// hands it out from the two arenas, which this creates.
void lt_test_plan_layer(lt_layer *layer, lt_arena *acts, lt_arena *scratch, int64_t B, int64_t T);

// After the layer was created on l->params (begun with lt_params_begin): allocates the
// parameters, fills each with N(0, 1/fan_in) seeded by its name (so a parameter of the same name
// gets the same values in any layer), and plans the layer for batches of B sequences of T tokens.
void lt_test_layer_finish(lt_test_layer *l, int64_t B, int64_t T);
void lt_test_layer_destroy(lt_test_layer *l);
// A parameter's values and gradient by name; fails the test if there is none.
float *lt_test_layer_param(lt_test_layer *l, const char *name);
float *lt_test_layer_grad(lt_test_layer *l, const char *name);
int64_t lt_test_layer_numel(lt_test_layer *l, const char *name);

#endif
