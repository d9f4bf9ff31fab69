// The byte-level BPE tokenizer's tables, shared by its loader (tokenizer_json.c: tokenizer.json
// to these tables) and its encoder/decoder (tokenizer_bpe.c). Not a public interface: the rest of
// longtrain uses lt_tokenizer (data/tokenizer.h).
//
// Byte-level BPE works on bytes shown as characters: GPT-2's bytes_to_unicode maps each of the 256
// bytes to a printable character (space is "Ġ", newline "Ċ"), and tokenizer.json's vocab and merges
// are written in those characters. The loader maps them back, so everything here is raw bytes.
#ifndef LT_BPE_H
#define LT_BPE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/hashmap.h"
#include "data/pretokenize.h"

// One step of the pre-tokenizer: prepend a space to each piece that does not start with one
// (ByteLevel's add_prefix_space), then cut it with `split`.
typedef struct lt_bpe_step {
  bool add_prefix_space;
  lt_split_regex split;
} lt_bpe_step;

enum { LT_BPE_MAX_STEPS = 8 };

// A token matched in the text before pre-tokenization (tokenizer.json's added_tokens).
typedef struct lt_bpe_added {
  char *content;
  size_t len;
  int32_t id;
  bool single_word, lstrip, rstrip, normalized, special;
} lt_bpe_added;

typedef struct lt_bpe_symbol {
  int32_t id, prev, next; // a doubly linked list over the word's symbols; -1 ends it
  uint32_t len;           // bytes covered; 0 once merged into its left neighbour
} lt_bpe_symbol;

typedef struct lt_bpe_merge {
  uint32_t rank, pos;
  int32_t new_id;
} lt_bpe_merge;

typedef struct lt_bpe {
  char path[LT_PATH_MAX];
  char name[64];      // "bpe:" and the path's tail, the datasets' tokenizer attribute
  int32_t vocab_size; // largest id + 1, added tokens included
  int32_t eos_id;     // an end-of-text added token if one is known, else -1

  // The model.
  lt_strmap vocab;      // a token's bytes -> id, for tokens written in byte-level characters
  lt_u64map merges;     // (left id << 32 | right id) -> (rank << 32 | merged id)
  int32_t byte_id[256]; // the id of each single byte, -1 if the vocab lacks it
  char *id_bytes;       // decode table: id i is id_bytes[id_start[i] .. id_start[i + 1])
  uint32_t *id_start;   // (vocab_size + 1)
  bool *id_known;       // (vocab_size) whether any token has this id
  int32_t unk_id;       // -1: none
  bool fuse_unk, ignore_merges;

  // Around the model.
  lt_bpe_added *added;
  int n_added;
  int *added_by_byte;   // indices into added, grouped by their first byte (built by the encoder)
  int added_first[257]; // those starting with byte b are added_by_byte[added_first[b] ..
                        // added_first[b + 1])
  lt_bpe_step steps[LT_BPE_MAX_STEPS];
  int n_steps;

  // Encoding state (a tokenizer encodes on one thread at a time).
  lt_strmap cache; // a word's bytes -> where its ids start in cache_ids (count, then ids)
  int32_t *cache_ids;
  size_t cache_len, cache_cap;
  lt_bpe_symbol *symbols;
  lt_bpe_merge *heap;
  int32_t *word_ids;
  size_t word_cap;
  char *prefixed[LT_BPE_MAX_STEPS]; // a piece with its prefix space, per step
  size_t prefixed_cap[LT_BPE_MAX_STEPS];
} lt_bpe;

// Reads tokenizer.json at `path` into bpe (zeroed first). Anything longtrain cannot reproduce
// exactly (another model type, a normalizer, an unknown regex, byte fallback, ...) is an
// LT_ERR_DATA naming the file and the field.
int lt_bpe_load(lt_bpe *bpe, const char *path);
// The same from JSON text in memory; `path` names it in messages.
int lt_bpe_parse(lt_bpe *bpe, const char *json, size_t len, const char *path);
void lt_bpe_free(lt_bpe *bpe);

#endif
