// Tokenizers turn text into token ids and back. The byte-level tokenizer maps each byte to its
// value and adds special tokens after the 256 bytes; a BPE tokenizer plugs in the same way.
#ifndef LT_TOKENIZER_H
#define LT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum { LT_BYTE_EOS = 256, LT_BYTE_BOS = 257, LT_BYTE_PAD = 258, LT_BYTE_VOCAB = 259 };

typedef struct lt_tokenizer lt_tokenizer;
struct lt_tokenizer {
  const char *name; // stored in datasets' "tokenizer" attribute
  int vocab_size, eos_id;
  // Appends the ids of text[0..len) to ids (capacity grown with realloc); returns an lt_status.
  int (*encode)(const lt_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n,
                size_t *capacity);
  // Writes the text of ids into out (at most cap bytes, NUL-terminated); special tokens print
  // as "<eos>" and the like.
  size_t (*decode)(const lt_tokenizer *tok, const int32_t *ids, size_t n, char *out, size_t cap);
  void *state;
};

void lt_tokenizer_byte(lt_tokenizer *tok);

#endif
