// tokenizer.json (Hugging Face tokenizers' format) to the tables of data/bpe.h. What is read:
// model (type BPE: vocab, merges as "a b" strings or [a, b] pairs, unk_token, fuse_unk,
// ignore_merges), added_tokens, pre_tokenizer (ByteLevel, Split with GPT-2's or Llama-3's regex,
// Sequence), and the ByteLevel decoder. The post_processor is not applied (encoding gives the
// text's ids only, as encode(text, add_special_tokens=False) does), and anything else that would
// change the ids is refused with the field's name rather than ignored.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fsutil.h"
#include "data/bpe.h"
#include "data/unicode_class.h"

enum { MAX_ID = 1 << 24 }; // ids past this are a corrupt file, not a 16M-token vocabulary

// GPT-2's bytes_to_unicode, inverted: the byte that character `cp` stands for, or -1. Printable
// Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD) are shown as
// U+0100 onwards, in byte order.
static int byte_of_char(uint32_t cp) {
  static int16_t table[256 + 68];
  static bool built = false;
  if (!built) {
    int next = 256;
    for (int i = 0; i < 256 + 68; i++) table[i] = -1;
    for (int b = 0; b < 256; b++) {
      bool shown = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      table[shown ? b : next++] = (int16_t)b;
    }
    built = true;
  }
  return cp < 256 + 68 ? table[cp] : -1;
}

// The bytes that a token written in byte-level characters stands for, into out (room for
// strlen(s) bytes); false if some character is not one of the 256.
static bool byte_level_bytes(const char *s, char *out, size_t *len) {
  size_t n = strlen(s);
  *len = 0;
  for (size_t at = 0; at < n;) {
    lt_uchar c = lt_utf8_char(s, n, at);
    int b = byte_of_char(c.cp);
    if (b < 0 || c.cp == 0xFFFD) return false;
    out[(*len)++] = (char)b;
    at += (size_t)c.len;
  }
  return true;
}

typedef struct loader {
  lt_bpe *bpe;
  const char *path;
  const cJSON *vocab; // model.vocab
  char *scratch;      // a token's bytes
  size_t scratch_cap;
} loader;

// An optional boolean field: absent or null is `fallback`.
static int get_bool(const loader *ld, const cJSON *obj, const char *key, const char *where,
                    bool fallback, bool *out) {
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = fallback;
  if (!item || cJSON_IsNull(item)) return LT_OK;
  LT_CHECK(cJSON_IsBool(item), LT_ERR_DATA, "%s: %s.%s must be true or false", ld->path, where,
           key);
  *out = cJSON_IsTrue(item);
  return LT_OK;
}

static const char *get_string(const cJSON *obj, const char *key) {
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsString(item) ? item->valuestring : NULL;
}

static int get_id(const loader *ld, const cJSON *item, const char *what, int32_t *id) {
  double v = cJSON_IsNumber(item) ? item->valuedouble : -1;
  LT_CHECK(v >= 0 && v < MAX_ID && v == floor(v), LT_ERR_DATA,
           "%s: %s must be an integer id in [0, %d)", ld->path, what, MAX_ID);
  *id = (int32_t)v;
  if (*id >= ld->bpe->vocab_size) ld->bpe->vocab_size = *id + 1;
  return LT_OK;
}

static int token_bytes(loader *ld, const char *text, size_t *len, bool *byte_level) {
  size_t n = strlen(text);
  if (n + 1 > ld->scratch_cap) {
    char *grown = realloc(ld->scratch, n + 1);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory reading %s", ld->path);
    ld->scratch = grown, ld->scratch_cap = n + 1;
  }
  *byte_level = byte_level_bytes(text, ld->scratch, len);
  return LT_OK;
}

// The id of a merge's part, which must be in the vocab. Sets *usable to false for a part written
// in characters outside the byte-level alphabet: such a merge can never apply.
static int merge_part(loader *ld, const char *part, size_t part_len, long index, int32_t *id,
                      bool *usable) {
  char text[1024];
  LT_CHECK(part_len < sizeof text, LT_ERR_DATA, "%s: model.merges[%ld] has a part of %zu bytes",
           ld->path, index, part_len);
  memcpy(text, part, part_len);
  text[part_len] = '\0';
  size_t len = 0;
  bool byte_level = false;
  LT_TRY(token_bytes(ld, text, &len, &byte_level));
  if (byte_level && lt_strmap_get(&ld->bpe->vocab, ld->scratch, len, id)) return LT_OK;
  *usable = false;
  if (!byte_level && cJSON_GetObjectItemCaseSensitive(ld->vocab, text)) return LT_OK;
  return lt_fail(LT_ERR_DATA, "%s: model.merges[%ld]: '%s' is not in model.vocab", ld->path, index,
                 text);
}

static int read_merges(loader *ld, const cJSON *merges) {
  LT_CHECK(cJSON_IsArray(merges), LT_ERR_DATA, "%s: model.merges must be a list", ld->path);
  lt_bpe *bpe = ld->bpe;
  LT_TRY(lt_u64map_init(&bpe->merges, (size_t)cJSON_GetArraySize(merges)));
  long rank = 0;
  char merged_text[2048];
  for (const cJSON *m = merges->child; m; m = m->next, rank++) {
    const char *a = NULL, *b = NULL;
    size_t a_len = 0, b_len = 0;
    if (cJSON_IsString(m)) { // "a b": the two parts around the one space
      const char *space = strchr(m->valuestring, ' ');
      LT_CHECK(space && !strchr(space + 1, ' '), LT_ERR_DATA,
               "%s: model.merges[%ld] '%s' is not two tokens separated by one space", ld->path,
               rank, m->valuestring);
      a = m->valuestring, a_len = (size_t)(space - a), b = space + 1, b_len = strlen(b);
    } else if (cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
               cJSON_IsString(m->child->next)) {
      a = m->child->valuestring, b = m->child->next->valuestring;
      a_len = strlen(a), b_len = strlen(b);
    }
    LT_CHECK(a, LT_ERR_DATA, "%s: model.merges[%ld] must be \"a b\" or [\"a\", \"b\"]", ld->path,
             rank);
    int32_t left, right, merged;
    bool usable = true;
    LT_TRY(merge_part(ld, a, a_len, rank, &left, &usable));
    LT_TRY(merge_part(ld, b, b_len, rank, &right, &usable));
    LT_CHECK(a_len + b_len < sizeof merged_text, LT_ERR_DATA, "%s: model.merges[%ld] is too long",
             ld->path, rank);
    memcpy(merged_text, a, a_len);
    memcpy(merged_text + a_len, b, b_len);
    merged_text[a_len + b_len] = '\0';
    if (usable) LT_TRY(merge_part(ld, merged_text, a_len + b_len, rank, &merged, &usable));
    if (!usable) continue;
    // A pair listed twice keeps its last rank, as tokenizers' own loader does.
    LT_TRY(lt_u64map_put(&bpe->merges, (uint64_t)left << 32 | (uint32_t)right,
                         (uint64_t)rank << 32 | (uint32_t)merged));
  }
  return LT_OK;
}

static int read_vocab(loader *ld, const cJSON *vocab) {
  LT_CHECK(cJSON_IsObject(vocab), LT_ERR_DATA, "%s: model.vocab must be an object of token: id",
           ld->path);
  lt_bpe *bpe = ld->bpe;
  ld->vocab = vocab;
  LT_TRY(lt_strmap_init(&bpe->vocab, (size_t)cJSON_GetArraySize(vocab)));
  for (const cJSON *t = vocab->child; t; t = t->next) {
    char what[256];
    snprintf(what, sizeof what, "model.vocab['%.200s']", t->string);
    int32_t id = 0;
    LT_TRY(get_id(ld, t, what, &id));
    size_t len = 0;
    bool byte_level = false;
    LT_TRY(token_bytes(ld, t->string, &len, &byte_level));
    if (byte_level) LT_TRY(lt_strmap_put(&bpe->vocab, ld->scratch, len, id));
  }
  return LT_OK;
}

static int read_model(loader *ld, const cJSON *model) {
  LT_CHECK(cJSON_IsObject(model), LT_ERR_DATA, "%s: has no model object: not a tokenizer.json",
           ld->path);
  const char *type = get_string(model, "type");
  LT_CHECK(!type || strcmp(type, "BPE") == 0, LT_ERR_DATA,
           "%s: model.type is %s; longtrain reads byte-level BPE tokenizers only (GPT-2, Llama-3 "
           "style)",
           ld->path, type);
  LT_CHECK(type || cJSON_GetObjectItemCaseSensitive(model, "merges"), LT_ERR_DATA,
           "%s: model has no type and no merges: not a BPE tokenizer", ld->path);
  const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
  LT_CHECK(
      !dropout || cJSON_IsNull(dropout) || (cJSON_IsNumber(dropout) && dropout->valuedouble == 0),
      LT_ERR_DATA, "%s: model.dropout (BPE-dropout) is not supported; set it to null", ld->path);
  static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (int i = 0; i < 2; i++) {
    const char *affix = get_string(model, affixes[i]);
    LT_CHECK(!affix || !affix[0], LT_ERR_DATA,
             "%s: model.%s '%s' is not supported (byte-level BPE has none)", ld->path, affixes[i],
             affix);
  }
  bool byte_fallback;
  LT_TRY(get_bool(ld, model, "byte_fallback", "model", false, &byte_fallback));
  LT_CHECK(!byte_fallback, LT_ERR_DATA,
           "%s: model.byte_fallback is set: a SentencePiece-style BPE, not byte-level BPE",
           ld->path);
  LT_TRY(get_bool(ld, model, "fuse_unk", "model", false, &ld->bpe->fuse_unk));
  LT_TRY(get_bool(ld, model, "ignore_merges", "model", false, &ld->bpe->ignore_merges));
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  LT_TRY(read_vocab(ld, vocab));
  ld->bpe->unk_id = -1;
  const char *unk = get_string(model, "unk_token");
  if (unk) {
    size_t len = 0;
    bool byte_level = false;
    LT_TRY(token_bytes(ld, unk, &len, &byte_level));
    LT_CHECK(byte_level && lt_strmap_get(&ld->bpe->vocab, ld->scratch, len, &ld->bpe->unk_id),
             LT_ERR_DATA, "%s: model.unk_token '%s' is not in model.vocab", ld->path, unk);
  }
  return LT_OK;
}

static int read_added(loader *ld, const cJSON *added) {
  lt_bpe *bpe = ld->bpe;
  if (!added || cJSON_IsNull(added)) return LT_OK;
  LT_CHECK(cJSON_IsArray(added), LT_ERR_DATA, "%s: added_tokens must be a list", ld->path);
  bpe->added = calloc((size_t)cJSON_GetArraySize(added) + 1, sizeof *bpe->added);
  LT_CHECK(bpe->added, LT_ERR_MEMORY, "out of memory reading %s", ld->path);
  int i = 0;
  for (const cJSON *t = added->child; t; t = t->next, i++) {
    char where[32];
    snprintf(where, sizeof where, "added_tokens[%d]", i);
    lt_bpe_added *a = &bpe->added[bpe->n_added];
    const char *content = get_string(t, "content");
    LT_CHECK(content && content[0], LT_ERR_DATA, "%s: %s has no content", ld->path, where);
    char what[64];
    snprintf(what, sizeof what, "%s.id", where);
    LT_TRY(get_id(ld, cJSON_GetObjectItemCaseSensitive(t, "id"), what, &a->id));
    LT_TRY(get_bool(ld, t, "single_word", where, false, &a->single_word));
    LT_TRY(get_bool(ld, t, "lstrip", where, false, &a->lstrip));
    LT_TRY(get_bool(ld, t, "rstrip", where, false, &a->rstrip));
    LT_TRY(get_bool(ld, t, "normalized", where, true, &a->normalized));
    LT_TRY(get_bool(ld, t, "special", where, false, &a->special));
    a->len = strlen(content);
    a->content = strdup(content);
    LT_CHECK(a->content, LT_ERR_MEMORY, "out of memory reading %s", ld->path);
    bpe->n_added++;
  }
  // The end-of-text token under the names GPT-2, Llama-3 and SentencePiece models give it.
  static const char *const eos_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"};
  bpe->eos_id = -1;
  for (int n = 0; n < 4 && bpe->eos_id < 0; n++)
    for (int k = 0; k < bpe->n_added && bpe->eos_id < 0; k++)
      if (strcmp(bpe->added[k].content, eos_names[n]) == 0) bpe->eos_id = bpe->added[k].id;
  return LT_OK;
}

// Every id's bytes for decoding: vocab tokens in byte-level characters stand for bytes, added
// tokens (and vocab tokens outside that alphabet) for their own UTF-8 text.
static int build_decode_table(loader *ld) {
  lt_bpe *bpe = ld->bpe;
  const size_t n = (size_t)bpe->vocab_size;
  const char **text = calloc(n + 1, sizeof *text); // per id: the token as tokenizer.json has it
  bool *verbatim = calloc(n + 1, sizeof *verbatim);
  bpe->id_start = calloc(n + 1, sizeof *bpe->id_start);
  bpe->id_known = calloc(n + 1, sizeof *bpe->id_known);
  int rc = text && verbatim && bpe->id_start && bpe->id_known
               ? LT_OK
               : lt_fail(LT_ERR_MEMORY, "out of memory reading %s", ld->path);
  for (const cJSON *t = ld->vocab->child; t && rc == LT_OK; t = t->next) {
    int32_t id = (int32_t)t->valuedouble;
    if (text[id])
      rc = lt_fail(LT_ERR_DATA, "%s: model.vocab gives id %d to both '%s' and '%s'", ld->path, id,
                   text[id], t->string);
    text[id] = t->string;
  }
  for (int i = 0; i < bpe->n_added && rc == LT_OK; i++) {
    text[bpe->added[i].id] = bpe->added[i].content;
    verbatim[bpe->added[i].id] = true;
  }
  size_t total = 0;
  for (size_t id = 0; id < n && rc == LT_OK; id++) total += text[id] ? strlen(text[id]) : 0;
  if (rc == LT_OK && total >= UINT32_MAX)
    rc = lt_fail(LT_ERR_DATA, "%s: the vocabulary's tokens exceed 4 GiB", ld->path);
  if (rc == LT_OK && !(bpe->id_bytes = malloc(total + 1)))
    rc = lt_fail(LT_ERR_MEMORY, "out of memory reading %s", ld->path);
  uint32_t at = 0;
  for (size_t id = 0; id < n && rc == LT_OK; id++) {
    bpe->id_start[id] = at;
    if (!text[id]) continue;
    size_t len = strlen(text[id]), byte_len;
    if (!verbatim[id] && byte_level_bytes(text[id], bpe->id_bytes + at, &byte_len))
      len = byte_len;
    else
      memcpy(bpe->id_bytes + at, text[id], len);
    at += (uint32_t)len;
    bpe->id_known[id] = true;
  }
  if (rc == LT_OK) bpe->id_start[n] = at;
  free(text);
  free(verbatim);
  return rc;
}

// Appends the steps of pre-tokenizer `pt` (at JSON path `where`). Byte-level BPE needs exactly one
// ByteLevel step, the last one: a Split after it would see byte-level characters, not the text.
static int read_pre_tokenizer(loader *ld, const cJSON *pt, const char *where, bool *byte_level) {
  lt_bpe *bpe = ld->bpe;
  const char *type = get_string(pt, "type");
  LT_CHECK(type, LT_ERR_DATA, "%s: %s has no type: byte-level BPE needs a ByteLevel pre_tokenizer",
           ld->path, where);
  LT_CHECK(!*byte_level, LT_ERR_DATA,
           "%s: %s (%s) comes after the ByteLevel pre-tokenizer; longtrain needs ByteLevel last",
           ld->path, where, type);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    LT_CHECK(cJSON_IsArray(list), LT_ERR_DATA, "%s: %s.pretokenizers must be a list", ld->path,
             where);
    int i = 0;
    for (const cJSON *item = list->child; item; item = item->next, i++) {
      char inner[256];
      snprintf(inner, sizeof inner, "%s.pretokenizers[%d]", where, i);
      LT_TRY(read_pre_tokenizer(ld, item, inner, byte_level));
    }
    return LT_OK;
  }
  LT_CHECK(bpe->n_steps < LT_BPE_MAX_STEPS, LT_ERR_DATA, "%s: %s: more than %d pre-tokenizers",
           ld->path, where, LT_BPE_MAX_STEPS);
  lt_bpe_step *step = &bpe->steps[bpe->n_steps++];
  if (strcmp(type, "ByteLevel") == 0) {
    LT_CHECK(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(pt, "add_prefix_space")), LT_ERR_DATA,
             "%s: %s.add_prefix_space must be true or false", ld->path, where);
    bool use_regex;
    LT_TRY(get_bool(ld, pt, "add_prefix_space", where, false, &step->add_prefix_space));
    LT_TRY(get_bool(ld, pt, "use_regex", where, true, &use_regex));
    step->split = use_regex ? LT_SPLIT_GPT2 : LT_SPLIT_NONE;
    *byte_level = true;
    return LT_OK;
  }
  LT_CHECK(strcmp(type, "Split") == 0, LT_ERR_DATA,
           "%s: %s type %s is not supported (longtrain implements ByteLevel, Split with GPT-2's "
           "or Llama-3's regex, and Sequence)",
           ld->path, where, type);
  const char *regex = get_string(cJSON_GetObjectItemCaseSensitive(pt, "pattern"), "Regex");
  LT_CHECK(regex, LT_ERR_DATA, "%s: %s.pattern must be {\"Regex\": ...}", ld->path, where);
  step->split = lt_split_regex_from_pattern(regex);
  LT_CHECK(step->split != LT_SPLIT_NONE, LT_ERR_DATA,
           "%s: %s.pattern.Regex is not GPT-2's or Llama-3's split regex, the two that longtrain "
           "implements: %.120s",
           ld->path, where, regex);
  const char *behavior = get_string(pt, "behavior");
  LT_CHECK(behavior && strcmp(behavior, "Isolated") == 0, LT_ERR_DATA,
           "%s: %s.behavior %s is not supported (only Isolated)", ld->path, where,
           behavior ? behavior : "(missing)");
  bool invert;
  LT_TRY(get_bool(ld, pt, "invert", where, false, &invert));
  LT_CHECK(!invert, LT_ERR_DATA, "%s: %s.invert is not supported", ld->path, where);
  return LT_OK;
}

static int check_normalizer_and_decoder(loader *ld, const cJSON *root) {
  const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
  const cJSON *norms = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
  bool none = !norm || cJSON_IsNull(norm) ||
              (strcmp(get_string(norm, "type") ? get_string(norm, "type") : "", "Sequence") == 0 &&
               cJSON_GetArraySize(norms) == 0);
  LT_CHECK(none, LT_ERR_DATA,
           "%s: normalizer %s is not supported (byte-level BPE tokenizers such as GPT-2's and "
           "Llama-3's have none)",
           ld->path, get_string(norm, "type") ? get_string(norm, "type") : "(untyped)");
  const char *decoder = get_string(cJSON_GetObjectItemCaseSensitive(root, "decoder"), "type");
  LT_CHECK(decoder && strcmp(decoder, "ByteLevel") == 0, LT_ERR_DATA,
           "%s: decoder is %s; byte-level BPE needs the ByteLevel decoder", ld->path,
           decoder ? decoder : "missing");
  return LT_OK;
}

static int read_tokenizer(loader *ld, const cJSON *root) {
  lt_bpe *bpe = ld->bpe;
  LT_CHECK(cJSON_IsObject(root), LT_ERR_DATA, "%s: not a tokenizer.json (not a JSON object)",
           ld->path);
  LT_TRY(read_model(ld, cJSON_GetObjectItemCaseSensitive(root, "model")));
  LT_TRY(check_normalizer_and_decoder(ld, root));
  bool byte_level = false;
  const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
  LT_CHECK(cJSON_IsObject(pt), LT_ERR_DATA,
           "%s: has no pre_tokenizer; byte-level BPE needs ByteLevel", ld->path);
  LT_TRY(read_pre_tokenizer(ld, pt, "pre_tokenizer", &byte_level));
  LT_CHECK(byte_level, LT_ERR_DATA,
           "%s: pre_tokenizer has no ByteLevel step: not a byte-level BPE tokenizer", ld->path);
  LT_TRY(read_added(ld, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
  LT_TRY(read_merges(ld, cJSON_GetObjectItemCaseSensitive(
                             cJSON_GetObjectItemCaseSensitive(root, "model"), "merges")));
  LT_TRY(build_decode_table(ld));
  for (int b = 0; b < 256; b++) {
    char byte = (char)b;
    if (!lt_strmap_get(&bpe->vocab, &byte, 1, &bpe->byte_id[b])) bpe->byte_id[b] = -1;
  }
  return lt_strmap_init(&bpe->cache, 1 << 16);
}

int lt_bpe_parse(lt_bpe *bpe, const char *json, size_t len, const char *path) {
  *bpe = (lt_bpe){.eos_id = -1, .unk_id = -1};
  snprintf(bpe->path, sizeof bpe->path, "%s", path);
  const char *tail = path; // as much of the path as a dataset's attribute holds, whole folders
  while (strlen(tail) + 4 >= sizeof bpe->name && strchr(tail, '/')) tail = strchr(tail, '/') + 1;
  snprintf(bpe->name, sizeof bpe->name, "bpe:%s", tail);
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
  if (!root) {
    size_t at = end ? (size_t)(end - json) : 0;
    return lt_fail(LT_ERR_DATA, "%s: not valid JSON (near byte %zu)", path, at);
  }
  loader ld = {.bpe = bpe, .path = path};
  int rc = read_tokenizer(&ld, root);
  free(ld.scratch);
  cJSON_Delete(root);
  if (rc != LT_OK) lt_bpe_free(bpe);
  return rc;
}

int lt_bpe_load(lt_bpe *bpe, const char *path) {
  char *json;
  size_t len;
  LT_TRY(lt_read_file(path, &json, &len));
  int rc = lt_bpe_parse(bpe, json, len, path);
  free(json);
  return rc;
}

void lt_bpe_free(lt_bpe *bpe) {
  lt_strmap_free(&bpe->vocab);
  lt_u64map_free(&bpe->merges);
  lt_strmap_free(&bpe->cache);
  for (int i = 0; i < bpe->n_added; i++) free(bpe->added[i].content);
  free(bpe->added);
  free(bpe->added_by_byte);
  free(bpe->id_bytes);
  free(bpe->id_start);
  free(bpe->id_known);
  free(bpe->cache_ids);
  free(bpe->symbols);
  free(bpe->heap);
  free(bpe->word_ids);
  for (int i = 0; i < LT_BPE_MAX_STEPS; i++) free(bpe->prefixed[i]);
  *bpe = (lt_bpe){0};
}
