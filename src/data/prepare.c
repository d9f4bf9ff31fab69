// `longtrain prepare`: text files to an HDF5 token dataset.
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

static const char *usage =
    "usage: longtrain prepare --output FILE.h5 [--tokenizer byte|TOKENIZER.json] [--doc-separator "
    "LINE] FILE...\n"
    "\n"
    "Tokenizes text files into an HDF5 token dataset for `longtrain train` (data.path).\n"
    "Each file is one document, or several when --doc-separator is given: a line equal to LINE\n"
    "ends a document (fortune files use '%'). Every document is followed by the EOS token.\n"
    "The output is written under a temporary name and renamed when complete.\n"
    "\n"
    "  --output FILE.h5        the dataset to write (required)\n"
    "  --tokenizer NAME        byte (256 byte values + <eos> <bos> <pad>; the default), or the\n"
    "                          path of a Hugging Face tokenizer.json (byte-level BPE: GPT-2,\n"
    "                          Llama-3); its <|endoftext|> / <|end_of_text|> ends documents\n"
    "  --doc-separator LINE    split files into documents at lines equal to LINE\n";

// A document's text is tokenized whole: BPE's pre-tokenization joins whitespace across line ends.
typedef struct doc_builder {
  char *text;
  size_t text_len, text_cap;
  int32_t *ids;
  size_t n, capacity;
  int64_t docs, skipped_empty;
} doc_builder;

static int add_text(doc_builder *doc, const char *line, size_t len) {
  if (doc->text_len + len > doc->text_cap) {
    size_t cap = (doc->text_len + len) * 2 + 4096;
    char *grown = realloc(doc->text, cap);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory holding a document of %zu bytes", cap / 2);
    doc->text = grown, doc->text_cap = cap;
  }
  memcpy(doc->text + doc->text_len, line, len);
  doc->text_len += len;
  return LT_OK;
}

static int end_document(lt_dataset_writer *w, const lt_tokenizer *tok, doc_builder *doc) {
  doc->n = 0;
  LT_TRY(tok->encode(tok, doc->text, doc->text_len, &doc->ids, &doc->n, &doc->capacity));
  doc->text_len = 0;
  if (doc->n == 0) {
    doc->skipped_empty++;
    return LT_OK;
  }
  int32_t eos = tok->eos_id;
  if (doc->n + 1 > doc->capacity) {
    int32_t *grown = realloc(doc->ids, (doc->n + 1) * sizeof *grown);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory");
    doc->ids = grown, doc->capacity = doc->n + 1;
  }
  doc->ids[doc->n++] = eos;
  LT_TRY(lt_dataset_writer_add(w, doc->ids, (int64_t)doc->n));
  doc->docs++;
  doc->n = 0;
  return LT_OK;
}

static int add_file(lt_dataset_writer *w, const lt_tokenizer *tok, const char *path,
                    const char *separator, doc_builder *doc) {
  FILE *f = fopen(path, "rb");
  LT_CHECK(f, LT_ERR_DATA, "%s: cannot open input: %s", path, strerror(errno));
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int rc = LT_OK;
  size_t sep_len = separator ? strlen(separator) : 0;
  while (rc == LT_OK && (len = getline(&line, &cap, f)) >= 0) {
    size_t body = (size_t)len;
    while (body > 0 && (line[body - 1] == '\n' || line[body - 1] == '\r')) body--;
    if (separator && body == sep_len && memcmp(line, separator, sep_len) == 0) {
      rc = end_document(w, tok, doc);
      continue;
    }
    rc = add_text(doc, line, (size_t)len);
  }
  if (rc == LT_OK && ferror(f)) rc = lt_fail(LT_ERR_DATA, "%s: read error", path);
  free(line);
  fclose(f);
  if (rc == LT_OK) rc = end_document(w, tok, doc);
  return rc;
}

int lt_prepare_main(int argc, char **argv) {
  static const struct option options[] = {{"output", required_argument, 0, 'o'},
                                          {"tokenizer", required_argument, 0, 't'},
                                          {"doc-separator", required_argument, 0, 's'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
  const char *output = NULL, *tokenizer = "byte", *separator = NULL;
  optind = 1;
  opterr = 0; // getopt's own message would be a second line; ours names the option instead
  for (int c; (c = getopt_long(argc, argv, "o:t:s:h", options, NULL)) != -1;) {
    switch (c) {
    case 'o':
      output = optarg;
      break;
    case 't':
      tokenizer = optarg;
      break;
    case 's':
      separator = optarg;
      break;
    case 'h':
      fputs(usage, stdout);
      return LT_OK;
    default:
      return lt_fail(LT_ERR_USAGE,
                     "prepare: unknown option, or one missing its value: '%s' (see longtrain "
                     "prepare --help)",
                     argv[optind - 1]);
    }
  }
  LT_CHECK(output, LT_ERR_USAGE,
           "prepare: --output FILE.h5 is required (see longtrain prepare --help)");
  LT_CHECK(optind < argc, LT_ERR_USAGE, "prepare: give at least one input text file");
  lt_tokenizer tok;
  LT_TRY(lt_tokenizer_open(&tok, tokenizer));
  if (tok.eos_id < 0) {
    lt_tokenizer_destroy(&tok);
    return lt_fail(LT_ERR_DATA,
                   "%s: has no end-of-text added token (<|endoftext|>, <|end_of_text|>, </s> or "
                   "<eos>) to end documents with",
                   tokenizer);
  }
  lt_dataset_writer w;
  int rc = lt_dataset_writer_open(&w, output, tok.name, tok.vocab_size, tok.eos_id);
  if (rc != LT_OK) {
    lt_tokenizer_destroy(&tok);
    return rc;
  }
  doc_builder doc = {0};
  for (int i = optind; i < argc && rc == LT_OK; i++)
    rc = add_file(&w, &tok, argv[i], separator, &doc);
  free(doc.ids);
  free(doc.text);
  if (rc == LT_OK && w.n_tokens < 2) rc = lt_fail(LT_ERR_DATA, "prepare: the inputs hold no text");
  if (rc != LT_OK) {
    lt_dataset_writer_abort(&w);
    lt_tokenizer_destroy(&tok);
    return rc;
  }
  int64_t n_tokens = w.n_tokens;
  rc = lt_dataset_writer_commit(&w);
  if (rc == LT_OK)
    lt_info("prepared %s: %lld tokens in %lld documents from %d files (tokenizer %s, vocab %d)",
            output, (long long)n_tokens, (long long)doc.docs, argc - optind, tok.name,
            tok.vocab_size);
  lt_tokenizer_destroy(&tok);
  return rc;
}
