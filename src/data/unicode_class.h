// Character classes for the pre-tokenization regexes of byte-level BPE tokenizers (GPT-2,
// Llama-3): \p{L}, \p{N} and \s as Oniguruma (Hugging Face tokenizers' regex engine) defines them.
// The data is generated from Unicode by tools/gen_unicode_classes.py.
#ifndef LT_UNICODE_CLASS_H
#define LT_UNICODE_CLASS_H

#include <stddef.h>
#include <stdint.h>

typedef enum lt_uclass {
  LT_UC_OTHER, // [^\s\p{L}\p{N}]: punctuation, symbols, marks, controls, unassigned
  LT_UC_LETTER,
  LT_UC_NUMBER,
  LT_UC_SPACE,
} lt_uclass;

lt_uclass lt_unicode_class(uint32_t cp);

// One character of UTF-8 text: its code point, length in bytes and class. A byte that does not
// start a valid UTF-8 sequence (stray continuation, overlong form, surrogate, beyond U+10FFFF,
// cut short) is one character of class OTHER with code point 0xFFFD, so any bytes can be split.
typedef struct lt_uchar {
  uint32_t cp;
  int len;
  lt_uclass cls;
} lt_uchar;

// The character starting at text[at]; at must be < len.
lt_uchar lt_utf8_char(const char *text, size_t len, size_t at);

#endif
