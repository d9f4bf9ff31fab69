// Byte-level BPE encoding and decoding, as Hugging Face tokenizers does it for GPT-2 and Llama-3
// tokenizer.json files (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with
// Subword Units", with GPT-2's byte-level alphabet, Radford et al. 2019):
//   1. added tokens (<|endoftext|>, ...) are cut out of the text first, leftmost-longest, those
//      with normalized=false in a first pass and the others in the gaps it leaves;
//   2. each remaining stretch goes through the pre-tokenizer steps (data/pretokenize.h), down to
//      words;
//   3. each word starts as its bytes and merges the adjacent pair of lowest rank, leftmost first,
//      until no listed pair is left; with ignore_merges (Llama-3), a word that is itself in the
//      vocab is one token.
// Words repeat, so their ids are cached.
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/bpe.h"
#include "data/tokenizer.h"
#include "data/unicode_class.h"

enum { CACHE_MAX_WORD = 256, CACHE_MAX_WORDS = 1 << 15 };

typedef struct id_list {
  int32_t **ids;
  size_t *n, *capacity;
} id_list;

static int push_ids(id_list out, const int32_t *ids, size_t count) {
  if (*out.n + count > *out.capacity) {
    size_t cap = (*out.n + count) * 2 + 64;
    int32_t *grown = realloc(*out.ids, cap * sizeof *grown);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory for %zu token ids", cap);
    *out.ids = grown, *out.capacity = cap;
  }
  memcpy(*out.ids + *out.n, ids, count * sizeof *ids);
  *out.n += count;
  return LT_OK;
}

static bool find_merge(const lt_bpe *bpe, int32_t left, int32_t right, lt_bpe_merge *m,
                       uint32_t pos) {
  uint64_t v;
  if (!lt_u64map_get(&bpe->merges, (uint64_t)left << 32 | (uint32_t)right, &v)) return false;
  *m = (lt_bpe_merge){(uint32_t)(v >> 32), pos, (int32_t)(uint32_t)v};
  return true;
}

// A min-heap of candidate merges ordered by (rank, position): the lowest rank first and, among
// equal ranks (the same pair in several places), the leftmost.
static bool merge_before(lt_bpe_merge a, lt_bpe_merge b) {
  return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(lt_bpe_merge *heap, size_t *size, lt_bpe_merge m) {
  size_t i = (*size)++;
  for (; i > 0 && merge_before(m, heap[(i - 1) / 2]); i = (i - 1) / 2) heap[i] = heap[(i - 1) / 2];
  heap[i] = m;
}

static lt_bpe_merge heap_pop(lt_bpe_merge *heap, size_t *size) {
  lt_bpe_merge top = heap[0], last = heap[--*size];
  size_t i = 0;
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= *size) break;
    if (child + 1 < *size && merge_before(heap[child + 1], heap[child])) child++;
    if (!merge_before(heap[child], last)) break;
    heap[i] = heap[child];
    i = child;
  }
  heap[i] = last;
  return top;
}

static int grow_word_buffers(lt_bpe *bpe, size_t n) {
  if (n <= bpe->word_cap) return LT_OK;
  size_t cap = n * 2;
  lt_bpe_symbol *symbols = realloc(bpe->symbols, cap * sizeof *symbols);
  if (symbols) bpe->symbols = symbols;
  // Each merge adds at most two candidates to the n - 1 it starts with.
  lt_bpe_merge *heap = realloc(bpe->heap, 3 * cap * sizeof *heap);
  if (heap) bpe->heap = heap;
  int32_t *ids = realloc(bpe->word_ids, cap * sizeof *ids);
  if (ids) bpe->word_ids = ids;
  LT_CHECK(symbols && heap && ids, LT_ERR_MEMORY, "out of memory for a word of %zu bytes", n);
  bpe->word_cap = cap;
  return LT_OK;
}

// The word's bytes as symbols; a byte without a token becomes unk_token (consecutive ones fused
// into one with fuse_unk).
static int initial_symbols(lt_bpe *bpe, const char *word, size_t n, int32_t *count) {
  int32_t k = 0;
  bool after_unk = false;
  for (size_t i = 0; i < n; i++) {
    int32_t id = bpe->byte_id[(unsigned char)word[i]];
    if (id < 0) {
      LT_CHECK(bpe->unk_id >= 0, LT_ERR_DATA,
               "%s: byte 0x%02X has no token in model.vocab and there is no unk_token (Hugging "
               "Face would drop it; longtrain does not lose text silently)",
               bpe->path, (unsigned char)word[i]);
      if (after_unk && bpe->fuse_unk) {
        bpe->symbols[k - 1].len++;
        continue;
      }
      id = bpe->unk_id;
    }
    after_unk = id == bpe->unk_id && bpe->byte_id[(unsigned char)word[i]] < 0;
    bpe->symbols[k] = (lt_bpe_symbol){id, k - 1, k + 1, 1};
    k++;
  }
  bpe->symbols[k - 1].next = -1;
  *count = k;
  return LT_OK;
}

// Merges the word's symbols in place (tokenizers' Word::merge_all): pop the best candidate; skip
// it if either side has changed since it was queued; merge the right symbol into the left; queue
// the pairs the new symbol forms with its neighbours.
static void merge_symbols(lt_bpe *bpe, int32_t count) {
  lt_bpe_symbol *sym = bpe->symbols;
  size_t size = 0;
  lt_bpe_merge m;
  for (int32_t i = 0; i + 1 < count; i++)
    if (find_merge(bpe, sym[i].id, sym[i + 1].id, &m, (uint32_t)i)) heap_push(bpe->heap, &size, m);
  while (size > 0) {
    lt_bpe_merge top = heap_pop(bpe->heap, &size);
    lt_bpe_symbol *left = &sym[top.pos];
    if (left->len == 0 || left->next < 0) continue;
    lt_bpe_symbol *right = &sym[left->next];
    if (!find_merge(bpe, left->id, right->id, &m, top.pos) || m.new_id != top.new_id) continue;
    left->id = top.new_id;
    left->len += right->len;
    right->len = 0;
    left->next = right->next;
    if (left->next >= 0) sym[left->next].prev = (int32_t)top.pos;
    if (left->prev >= 0 && find_merge(bpe, sym[left->prev].id, left->id, &m, (uint32_t)left->prev))
      heap_push(bpe->heap, &size, m);
    if (left->next >= 0 && find_merge(bpe, left->id, sym[left->next].id, &m, top.pos))
      heap_push(bpe->heap, &size, m);
  }
}

static int cache_word(lt_bpe *bpe, const char *word, size_t n, const int32_t *ids, int32_t count) {
  if (bpe->cache.count >= CACHE_MAX_WORDS) { // bounded memory: start over
    lt_strmap_clear(&bpe->cache);
    bpe->cache_len = 0;
  }
  if (bpe->cache_len + (size_t)count + 1 > bpe->cache_cap) {
    size_t cap = (bpe->cache_len + (size_t)count + 1) * 2;
    int32_t *grown = realloc(bpe->cache_ids, cap * sizeof *grown);
    LT_CHECK(grown, LT_ERR_MEMORY, "out of memory for the tokenizer's word cache");
    bpe->cache_ids = grown, bpe->cache_cap = cap;
  }
  LT_TRY(lt_strmap_put(&bpe->cache, word, n, (int32_t)bpe->cache_len));
  bpe->cache_ids[bpe->cache_len++] = count;
  memcpy(bpe->cache_ids + bpe->cache_len, ids, (size_t)count * sizeof *ids);
  bpe->cache_len += (size_t)count;
  return LT_OK;
}

static int encode_word(lt_bpe *bpe, const char *word, size_t n, id_list out) {
  int32_t id;
  if (bpe->ignore_merges && lt_strmap_get(&bpe->vocab, word, n, &id)) return push_ids(out, &id, 1);
  int32_t at;
  if (n <= CACHE_MAX_WORD && lt_strmap_get(&bpe->cache, word, n, &at))
    return push_ids(out, bpe->cache_ids + at + 1, (size_t)bpe->cache_ids[at]);
  LT_TRY(grow_word_buffers(bpe, n));
  int32_t count = 0;
  LT_TRY(initial_symbols(bpe, word, n, &count));
  merge_symbols(bpe, count);
  int32_t *ids = bpe->word_ids, k = 0;
  for (int32_t i = 0; i >= 0; i = bpe->symbols[i].next) ids[k++] = bpe->symbols[i].id;
  if (n <= CACHE_MAX_WORD) LT_TRY(cache_word(bpe, word, n, ids, k));
  return push_ids(out, ids, (size_t)k);
}

// Pre-tokenizer step `step` on one piece of text, then the steps after it, then BPE on each word.
// Empty pieces are dropped, as tokenizers drops them.
static int encode_piece(lt_bpe *bpe, int step, const char *s, size_t n, id_list out) {
  if (n == 0) return LT_OK;
  if (step == bpe->n_steps) return encode_word(bpe, s, n, out);
  const lt_bpe_step *st = &bpe->steps[step];
  if (st->add_prefix_space && s[0] != ' ') {
    if (n + 1 > bpe->prefixed_cap[step]) {
      char *grown = realloc(bpe->prefixed[step], 2 * (n + 1));
      LT_CHECK(grown, LT_ERR_MEMORY, "out of memory tokenizing %zu bytes", n);
      bpe->prefixed[step] = grown, bpe->prefixed_cap[step] = 2 * (n + 1);
    }
    bpe->prefixed[step][0] = ' ';
    memcpy(bpe->prefixed[step] + 1, s, n);
    s = bpe->prefixed[step], n++;
  }
  if (st->split == LT_SPLIT_NONE) return encode_piece(bpe, step + 1, s, n, out);
  for (size_t at = 0, end; at < n; at = end) {
    end = lt_split_match_end(st->split, s, n, at);
    LT_TRY(encode_piece(bpe, step + 1, s + at, end - at, out));
  }
  return LT_OK;
}

static bool is_space_at(const char *s, size_t n, size_t at) {
  return at < n && lt_utf8_char(s, n, at).cls == LT_UC_SPACE;
}

// Letters and numbers make words for single_word (Rust's char::is_alphanumeric, less the combining
// marks it also counts).
static bool is_word_char_at(const char *s, size_t n, size_t at) {
  if (at >= n) return false;
  lt_uclass c = lt_utf8_char(s, n, at).cls;
  return c == LT_UC_LETTER || c == LT_UC_NUMBER;
}

static size_t char_start_before(const char *s, size_t at) {
  do at--;
  while (at > 0 && ((unsigned char)s[at] & 0xC0) == 0x80);
  return at;
}

// Where the whitespace that ends s[from..to) begins, reading forwards as the rest of the encoder
// does (a backwards scan could not tell a stray continuation byte from part of a character).
static size_t space_run_start(const char *s, size_t n, size_t from, size_t to) {
  size_t begin = from;
  for (size_t at = from; at < to;) {
    lt_uchar c = lt_utf8_char(s, n, at);
    at += (size_t)c.len;
    if (c.cls != LT_UC_SPACE) begin = at;
  }
  return begin;
}

// The leftmost-longest added token of the given pass that occurs in s[from..n): its index, or -1.
static int find_added(const lt_bpe *bpe, const char *s, size_t n, size_t from, bool normalized,
                      size_t *start) {
  for (size_t i = from; i < n; i++) {
    unsigned char b = (unsigned char)s[i];
    int best = -1;
    for (int k = bpe->added_first[b]; k < bpe->added_first[b + 1]; k++) {
      const lt_bpe_added *a = &bpe->added[bpe->added_by_byte[k]];
      if (a->normalized == normalized && a->len <= n - i &&
          memcmp(s + i, a->content, a->len) == 0 && (best < 0 || a->len > bpe->added[best].len))
        best = bpe->added_by_byte[k];
    }
    if (best >= 0) {
      *start = i;
      return best;
    }
  }
  return -1;
}

static int encode_text(lt_bpe *bpe, const char *s, size_t n, bool normalized, id_list out);

// The text between added tokens: the second pass's tokens, or pre-tokenization and BPE.
static int encode_between(lt_bpe *bpe, const char *s, size_t n, bool normalized, id_list out) {
  return normalized ? encode_piece(bpe, 0, s, n, out) : encode_text(bpe, s, n, true, out);
}

// Cuts the added tokens of one pass out of s (tokenizers' AddedVocabulary::find_matches): a
// single_word token must not touch letters or digits; lstrip / rstrip tokens take the whitespace
// before / after them along.
static int encode_text(lt_bpe *bpe, const char *s, size_t n, bool normalized, id_list out) {
  size_t done = 0, start;
  for (size_t at = 0; at < n;) {
    int k = find_added(bpe, s, n, at, normalized, &start);
    if (k < 0) break;
    const lt_bpe_added *a = &bpe->added[k];
    size_t stop = start + a->len;
    at = stop;
    if (a->single_word && ((start > 0 && is_word_char_at(s, n, char_start_before(s, start))) ||
                           is_word_char_at(s, n, stop)))
      continue;
    if (a->lstrip) start = space_run_start(s, n, done, start);
    if (a->rstrip)
      while (is_space_at(s, n, stop)) stop += (size_t)lt_utf8_char(s, n, stop).len;
    at = stop;
    LT_TRY(encode_between(bpe, s + done, start - done, normalized, out));
    LT_TRY(push_ids(out, &a->id, 1));
    done = stop;
  }
  return encode_between(bpe, s + done, n - done, normalized, out);
}

static int bpe_encode(const lt_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                      size_t *n, size_t *capacity) {
  return encode_text(tok->state, text, len, false, (id_list){ids, n, capacity});
}

static size_t bpe_decode(const lt_tokenizer *tok, const int32_t *ids, size_t n, char *out,
                         size_t cap) {
  const lt_bpe *bpe = tok->state;
  size_t len = 0;
  for (size_t i = 0; i < n && cap > 0; i++) {
    if (ids[i] < 0 || ids[i] >= bpe->vocab_size || !bpe->id_known[ids[i]]) continue; // as HF does
    size_t piece = bpe->id_start[ids[i] + 1] - bpe->id_start[ids[i]];
    if (len + piece + 1 > cap) break;
    memcpy(out + len, bpe->id_bytes + bpe->id_start[ids[i]], piece);
    len += piece;
  }
  if (cap > 0) out[len] = '\0';
  return len;
}

static void bpe_destroy(lt_tokenizer *tok) {
  lt_bpe_free(tok->state);
  free(tok->state);
  tok->state = NULL;
}

// Groups the added tokens by first byte, so that the scan for them costs one table look-up for
// most bytes of the text.
static int index_added(lt_bpe *bpe) {
  bpe->added_by_byte = malloc(((size_t)bpe->n_added + 1) * sizeof *bpe->added_by_byte);
  LT_CHECK(bpe->added_by_byte, LT_ERR_MEMORY, "out of memory indexing %s", bpe->path);
  memset(bpe->added_first, 0, sizeof bpe->added_first);
  for (int i = 0; i < bpe->n_added; i++)
    bpe->added_first[(unsigned char)bpe->added[i].content[0] + 1]++;
  for (int b = 0; b < 256; b++) bpe->added_first[b + 1] += bpe->added_first[b];
  int fill[256];
  memcpy(fill, bpe->added_first, sizeof fill);
  for (int i = 0; i < bpe->n_added; i++)
    bpe->added_by_byte[fill[(unsigned char)bpe->added[i].content[0]]++] = i;
  return LT_OK;
}

int lt_tokenizer_bpe(lt_tokenizer *tok, const char *path) {
  lt_bpe *bpe = calloc(1, sizeof *bpe);
  LT_CHECK(bpe, LT_ERR_MEMORY, "out of memory loading %s", path);
  int rc = lt_bpe_load(bpe, path);
  if (rc == LT_OK) rc = index_added(bpe);
  if (rc != LT_OK) {
    lt_bpe_free(bpe);
    free(bpe);
    return rc;
  }
  *tok = (lt_tokenizer){.name = bpe->name,
                        .vocab_size = bpe->vocab_size,
                        .eos_id = bpe->eos_id,
                        .encode = bpe_encode,
                        .decode = bpe_decode,
                        .destroy = bpe_destroy,
                        .state = bpe};
  return LT_OK;
}
