// Tokenizers turn text into token ids and back: the byte-level tokenizer (each byte its value,
// special tokens after the 256 bytes) and byte-level BPE read from a Hugging Face tokenizer.json
// (GPT-2 / Llama-3 style; data/tokenizer_bpe.c).
#ifndef LT_TOKENIZER_H
#define LT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum { LT_BYTE_EOS = 256, LT_BYTE_BOS = 257, LT_BYTE_PAD = 258, LT_BYTE_VOCAB = 259 };

typedef struct lt_tokenizer lt_tokenizer;
struct lt_tokenizer {
  const char *name; // stored in datasets' "tokenizer" attribute
  int vocab_size;
  int eos_id; // the token that ends a document; -1 if the tokenizer names none
  // Appends the ids of text[0..len) to ids (capacity grown with realloc); returns an lt_status.
  // Not thread-safe: a tokenizer keeps a cache and scratch memory; use one per thread.
  int (*encode)(const lt_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n,
                size_t *capacity);
  // Writes the text of ids into out (at most cap bytes, NUL-terminated) and returns its length;
  // stops before the first token that does not fit. Special tokens print as their text ("<eos>",
  // "<|endoftext|>"); ids that name no token are skipped.
  size_t (*decode)(const lt_tokenizer *tok, const int32_t *ids, size_t n, char *out, size_t cap);
  void (*destroy)(lt_tokenizer *tok); // NULL when there is nothing to free
  void *state;
};

void lt_tokenizer_byte(lt_tokenizer *tok);
// Byte-level BPE from a Hugging Face tokenizer.json. Files it cannot reproduce exactly (not BPE,
// not byte-level, a normalizer, an unknown split regex, ...) are LT_ERR_DATA naming the field.
int lt_tokenizer_bpe(lt_tokenizer *tok, const char *path);
// "byte", or the path of a tokenizer.json.
int lt_tokenizer_open(lt_tokenizer *tok, const char *spec);
void lt_tokenizer_destroy(lt_tokenizer *tok);

#endif
