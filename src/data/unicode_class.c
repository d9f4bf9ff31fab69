#include "data/unicode_class.h"

typedef struct class_range {
  uint32_t lo, hi;
  lt_uclass cls;
} class_range;

#define R(lo, hi, c)                                                                               \
  { lo, hi, c }
#define L LT_UC_LETTER
#define N LT_UC_NUMBER
#define S LT_UC_SPACE
static const class_range ranges[] = {
#include "data/unicode_class_ranges.inc"
};
#undef R
#undef L
#undef N
#undef S

lt_uclass lt_unicode_class(uint32_t cp) {
  // ASCII is most of most text: answer it without the search.
  if (cp < 0x80) {
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return LT_UC_LETTER;
    if (cp >= '0' && cp <= '9') return LT_UC_NUMBER;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return LT_UC_SPACE;
    return LT_UC_OTHER;
  }
  size_t lo = 0, hi = sizeof ranges / sizeof ranges[0];
  while (lo < hi) { // first range with ranges[i].hi >= cp
    size_t mid = lo + (hi - lo) / 2;
    if (ranges[mid].hi < cp)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < sizeof ranges / sizeof ranges[0] && ranges[lo].lo <= cp) return ranges[lo].cls;
  return LT_UC_OTHER;
}

lt_uchar lt_utf8_char(const char *text, size_t len, size_t at) {
  const unsigned char *s = (const unsigned char *)text + at;
  const size_t left = len - at;
  const lt_uchar invalid = {0xFFFD, 1, LT_UC_OTHER};
  uint32_t cp;
  int n;
  if (s[0] < 0x80) {
    cp = s[0], n = 1;
  } else if (s[0] >= 0xC2 && s[0] <= 0xDF) {
    cp = s[0] & 0x1Fu, n = 2;
  } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
    cp = s[0] & 0x0Fu, n = 3;
  } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
    cp = s[0] & 0x07u, n = 4;
  } else {
    return invalid; // continuation byte, or a lead byte that only overlong or too large forms use
  }
  if ((size_t)n > left) return invalid;
  for (int i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return invalid;
    cp = (cp << 6) | (s[i] & 0x3Fu);
  }
  // Overlong 3- and 4-byte forms, UTF-16 surrogates, and code points past U+10FFFF.
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return invalid;
  return (lt_uchar){cp, n, lt_unicode_class(cp)};
}
