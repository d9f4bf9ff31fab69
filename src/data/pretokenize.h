// The pre-tokenization split regexes of byte-level BPE tokenizers, implemented by hand: text is
// cut into pieces ("words") before BPE merges run inside each piece. The behaviour is that of the
// regexes under Oniguruma, Hugging Face tokenizers' engine (leftmost alternative first, greedy
// quantifiers with backtracking), with the character classes of data/unicode_class.h.
#ifndef LT_PRETOKENIZE_H
#define LT_PRETOKENIZE_H

#include <stddef.h>

typedef enum lt_split_regex {
  LT_SPLIT_NONE,
  // GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  LT_SPLIT_GPT2,
  // Llama-3 (and tiktoken's cl100k_base):
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+
  LT_SPLIT_LLAMA3,
} lt_split_regex;

// The regex whose source text (as in tokenizer.json) is `pattern`, or LT_SPLIT_NONE if it is
// neither of the two.
lt_split_regex lt_split_regex_from_pattern(const char *pattern);
extern const char lt_split_pattern_gpt2[], lt_split_pattern_llama3[];

// Where the match of `regex` that starts at text[at] ends (at < len). Both regexes match every
// character, so the match is never empty and consecutive matches tile the text.
size_t lt_split_match_end(lt_split_regex regex, const char *text, size_t len, size_t at);

#endif
