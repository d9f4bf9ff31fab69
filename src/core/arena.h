// Arenas: one allocation on one device, handed out as tensor views by bumping an offset.
//
// Activations, gradients of activations and scratch space all come from arenas, sized once per
// run by a measuring pass: an arena in measuring mode hands out views with no memory behind them
// and records how much would have been used. The model runs its allocation code once measuring,
// then once for real, so the sizes can never drift from the code that uses them.
#ifndef LT_ARENA_H
#define LT_ARENA_H

#include "core/tensor.h"

typedef struct lt_arena {
  const char *name; // for error messages: "activations", "scratch"
  lt_device device;
  char *base;      // NULL while measuring
  size_t capacity; // bytes behind base
  size_t used;     // bytes handed out so far
  size_t peak;     // the most ever in use at once
  bool measuring;
} lt_arena;

// An arena that only counts: views have data == NULL.
void lt_arena_measure(lt_arena *arena, lt_device device, const char *name);
// An arena with `capacity` bytes behind it.
int lt_arena_create(lt_arena *arena, lt_device device, size_t capacity, const char *name);
void lt_arena_destroy(lt_arena *arena);

int lt_arena_alloc(lt_arena *arena, lt_tensor *out, lt_dtype dtype, int ndim, const int64_t *shape);
#define lt_arena_alloc1(ar, out, dt, a)    lt_arena_alloc((ar), (out), (dt), 1, LT_SHAPE(a))
#define lt_arena_alloc2(ar, out, dt, a, b) lt_arena_alloc((ar), (out), (dt), 2, LT_SHAPE(a, b))
#define lt_arena_alloc3(ar, out, dt, a, b, c)                                                      \
  lt_arena_alloc((ar), (out), (dt), 3, LT_SHAPE(a, b, c))
#define lt_arena_alloc4(ar, out, dt, a, b, c, d)                                                   \
  lt_arena_alloc((ar), (out), (dt), 4, LT_SHAPE(a, b, c, d))

// Stack discipline for scratch: take a mark, allocate, release back to the mark.
static inline size_t lt_arena_mark(const lt_arena *arena) {
  return arena->used;
}
static inline void lt_arena_release(lt_arena *arena, size_t mark) {
  arena->used = mark;
}

#endif
