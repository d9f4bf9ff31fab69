#include "data/tokenizer.h"

#include <string.h>

#include "core/error.h"

int lt_tokenizer_open(lt_tokenizer *tok, const char *spec) {
  if (strcmp(spec, "byte") == 0) {
    lt_tokenizer_byte(tok);
    return LT_OK;
  }
  return lt_tokenizer_bpe(tok, spec);
}

void lt_tokenizer_destroy(lt_tokenizer *tok) {
  if (tok->destroy) tok->destroy(tok);
  *tok = (lt_tokenizer){0};
}
