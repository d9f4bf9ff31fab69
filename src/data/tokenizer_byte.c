#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/tokenizer.h"

static int byte_encode(const lt_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                       size_t *n, size_t *capacity) {
  (void)tok;
  if (*n + len > *capacity) {
    size_t cap = (*n + len) * 2 + 16;
    int32_t *grown = realloc(*ids, cap * sizeof **ids);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory tokenizing %zu bytes", len);
    *ids = grown, *capacity = cap;
  }
  for (size_t i = 0; i < len; i++) (*ids)[(*n)++] = (unsigned char)text[i];
  return LT_OK;
}

static size_t byte_decode(const lt_tokenizer *tok, const int32_t *ids, size_t n, char *out,
                          size_t cap) {
  (void)tok;
  static const char *special[] = {"<eos>", "<bos>", "<pad>"};
  size_t len = 0;
  for (size_t i = 0; i < n && cap > 0; i++) {
    const char *piece = "<?>";
    char byte[2] = {0};
    if (ids[i] >= 0 && ids[i] < 256)
      byte[0] = (char)ids[i], piece = byte;
    else if (ids[i] >= 256 && ids[i] < LT_BYTE_VOCAB)
      piece = special[ids[i] - 256];
    size_t piece_len = ids[i] >= 0 && ids[i] < 256 ? 1 : strlen(piece);
    if (len + piece_len + 1 > cap) break;
    memcpy(out + len, piece, piece_len);
    len += piece_len;
  }
  if (cap > 0) out[len] = '\0';
  return len;
}

void lt_tokenizer_byte(lt_tokenizer *tok) {
  *tok = (lt_tokenizer){.name = "byte",
                        .vocab_size = LT_BYTE_VOCAB,
                        .eos_id = LT_BYTE_EOS,
                        .encode = byte_encode,
                        .decode = byte_decode};
}
