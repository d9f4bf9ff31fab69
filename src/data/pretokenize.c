#include "data/pretokenize.h"

#include <stdbool.h>
#include <string.h>

#include "data/unicode_class.h"

const char lt_split_pattern_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char lt_split_pattern_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

lt_split_regex lt_split_regex_from_pattern(const char *pattern) {
  if (strcmp(pattern, lt_split_pattern_gpt2) == 0) return LT_SPLIT_GPT2;
  if (strcmp(pattern, lt_split_pattern_llama3) == 0) return LT_SPLIT_LLAMA3;
  return LT_SPLIT_NONE;
}

typedef struct text {
  const char *s;
  size_t len;
} text;

// The class of the character at `at`, or -1 at the end of the text.
static int class_at(text t, size_t at) {
  return at < t.len ? (int)lt_utf8_char(t.s, t.len, at).cls : -1;
}

static size_t char_end(text t, size_t at) {
  return at + (size_t)lt_utf8_char(t.s, t.len, at).len;
}

// The end of the run of characters of class `cls` starting at `at`, at most `max` of them.
static size_t run_end(text t, size_t at, lt_uclass cls, int max) {
  for (int n = 0; n < max && at < t.len; n++) {
    lt_uchar c = lt_utf8_char(t.s, t.len, at);
    if (c.cls != cls) break;
    at += (size_t)c.len;
  }
  return at;
}

static bool is_newline(text t, size_t at) {
  return at < t.len && (t.s[at] == '\r' || t.s[at] == '\n');
}

// Whether the character at `at` is `lower` (an ASCII letter), in either case when ignoring case.
// Unicode case folding adds one more: U+017F LATIN SMALL LETTER LONG S folds to 's'.
static size_t letter_end(text t, size_t at, char lower, bool ignore_case) {
  if (at >= t.len) return 0;
  lt_uchar c = lt_utf8_char(t.s, t.len, at);
  bool same = c.cp == (uint32_t)lower ||
              (ignore_case && (c.cp == (uint32_t)lower - 32 || (lower == 's' && c.cp == 0x17F)));
  return same ? at + (size_t)c.len : 0;
}

// 's|'t|'re|'ve|'m|'ll|'d at `at` (which holds an apostrophe): the end, or 0.
static size_t contraction_end(text t, size_t at, bool ignore_case) {
  static const char *const suffixes[] = {"s", "t", "re", "ve", "m", "ll", "d"};
  for (int i = 0; i < 7; i++) {
    size_t end = at + 1;
    for (const char *c = suffixes[i]; *c && end; c++) end = letter_end(t, end, *c, ignore_case);
    if (end) return end;
  }
  return 0;
}

// \s+(?!\S)|\s+ at `at` (a whitespace character). Greedy \s+ takes the whole run; if a non-space
// follows, the lookahead fails there and backtracking gives the run less its last character
// (which then starts the next piece, e.g. as the space of " word"), unless that would be empty.
static size_t space_run_end(text t, size_t at) {
  size_t end = run_end(t, at, LT_UC_SPACE, __INT_MAX__);
  if (end == t.len) return end;
  size_t last = at;
  for (size_t i = at; i < end; i = char_end(t, i)) last = i;
  return last > at ? last : end;
}

static size_t gpt2_match_end(text t, size_t at) {
  if (t.s[at] == '\'') {
    size_t end = contraction_end(t, at, false);
    if (end) return end;
  }
  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`, tried in this order; the optional space is
  // U+0020 only and is taken when the class follows it.
  static const lt_uclass classes[] = {LT_UC_LETTER, LT_UC_NUMBER, LT_UC_OTHER};
  for (int i = 0; i < 3; i++) {
    size_t start = t.s[at] == ' ' && class_at(t, at + 1) == (int)classes[i] ? at + 1 : at;
    if (class_at(t, start) == (int)classes[i]) return run_end(t, start, classes[i], __INT_MAX__);
  }
  return space_run_end(t, at);
}

static size_t llama3_match_end(text t, size_t at) {
  if (t.s[at] == '\'') {
    size_t end = contraction_end(t, at, true);
    if (end) return end;
  }
  lt_uchar c = lt_utf8_char(t.s, t.len, at);
  // [^\r\n\p{L}\p{N}]?\p{L}+ : one character of punctuation or whitespace may lead the letters.
  if (c.cls != LT_UC_LETTER && c.cls != LT_UC_NUMBER && !is_newline(t, at) &&
      class_at(t, at + (size_t)c.len) == LT_UC_LETTER)
    return run_end(t, at + (size_t)c.len, LT_UC_LETTER, __INT_MAX__);
  if (c.cls == LT_UC_LETTER) return run_end(t, at, LT_UC_LETTER, __INT_MAX__);
  if (c.cls == LT_UC_NUMBER) return run_end(t, at, LT_UC_NUMBER, 3); // \p{N}{1,3}
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t start = t.s[at] == ' ' && class_at(t, at + 1) == LT_UC_OTHER ? at + 1 : at;
  if (class_at(t, start) == LT_UC_OTHER) {
    size_t end = run_end(t, start, LT_UC_OTHER, __INT_MAX__);
    while (is_newline(t, end)) end++;
    return end;
  }
  // \s*[\r\n]+ : \s* backtracks from the end of the whitespace run to its last CR or LF, which
  // [\r\n]+ then takes; without one in the run, the whitespace alternatives follow.
  size_t end = run_end(t, at, LT_UC_SPACE, __INT_MAX__), newline_end = 0;
  for (size_t i = at; i < end; i++)
    if (is_newline(t, i)) newline_end = i + 1;
  return newline_end ? newline_end : space_run_end(t, at);
}

size_t lt_split_match_end(lt_split_regex regex, const char *s, size_t len, size_t at) {
  text t = {s, len};
  switch (regex) {
  case LT_SPLIT_GPT2:
    return gpt2_match_end(t, at);
  case LT_SPLIT_LLAMA3:
    return llama3_match_end(t, at);
  case LT_SPLIT_NONE:
    break;
  }
  return len;
}
