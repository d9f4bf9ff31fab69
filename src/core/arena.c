#include "core/arena.h"

#include "core/device.h"
#include "core/error.h"

#define ARENA_ALIGN 256

void lt_arena_measure(lt_arena *arena, lt_device device, const char *name) {
  *arena = (lt_arena){.name = name, .device = device, .measuring = true};
}

int lt_arena_create(lt_arena *arena, lt_device device, size_t capacity, const char *name) {
  *arena = (lt_arena){.name = name, .device = device, .capacity = capacity};
  void *base;
  LT_TRY(lt_device_alloc(device, capacity, name, &base));
  arena->base = base;
  return LT_OK;
}

void lt_arena_destroy(lt_arena *arena) {
  if (!arena->measuring) lt_device_free(arena->device, arena->base);
  *arena = (lt_arena){0};
}

int lt_arena_alloc(lt_arena *arena, lt_tensor *out, lt_dtype dtype, int ndim,
                   const int64_t *shape) {
  *out = lt_view(NULL, dtype, arena->device, ndim, shape);
  size_t bytes = (lt_nbytes(*out) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  if (!arena->measuring) {
    // Sizes come from a measuring pass over the same code, so running out is a bug.
    if (arena->used + bytes > arena->capacity)
      return lt_fail_internal(__FILE__, __LINE__, "arena '%s' overflow: %zu + %zu > %zu bytes",
                              arena->name, arena->used, bytes, arena->capacity);
    out->data = arena->base + arena->used;
  }
  arena->used += bytes;
  if (arena->used > arena->peak) arena->peak = arena->used;
  return LT_OK;
}
