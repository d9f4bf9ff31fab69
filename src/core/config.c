#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "core/error.h"

static const lt_config_key *find_key(const char *path) {
  for (int i = 0; i < lt_config_n_keys; i++)
    if (strcmp(lt_config_keys[i].path, path) == 0) return &lt_config_keys[i];
  return NULL;
}

// True when `path` names a section: some key lies under "path.".
static bool is_section(const char *path) {
  size_t n = strlen(path);
  for (int i = 0; i < lt_config_n_keys; i++)
    if (strncmp(lt_config_keys[i].path, path, n) == 0 && lt_config_keys[i].path[n] == '.')
      return true;
  return false;
}

static int edit_distance(const char *a, const char *b) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (la > 63 || lb > 63) return 99;
  int d[64][64];
  for (int i = 0; i <= la; i++) d[i][0] = i;
  for (int j = 0; j <= lb; j++) d[0][j] = j;
  for (int i = 1; i <= la; i++)
    for (int j = 1; j <= lb; j++) {
      int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
      d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
    }
  return d[la][lb];
}

// The first `depth` + 1 dot-separated parts of `path` ("model.d_model" at depth 0 is "model").
static void path_prefix(const char *path, int depth, char *out, size_t cap) {
  size_t n = 0;
  while (path[n] && !(path[n] == '.' && depth-- == 0)) n++;
  snprintf(out, cap, "%.*s", (int)n, path);
}

// Suggests the nearest key or section at the same depth, so a misspelt section ("modle:") is
// answered with "model" and a misspelt key with the full key path.
static int unknown_key(const char *where, const char *path) {
  int depth = 0;
  for (const char *p = path; *p; p++) depth += *p == '.';
  char best[256] = "";
  int best_d = 4; // suggest only near misses
  for (int i = 0; i < lt_config_n_keys; i++) {
    char candidate[256];
    path_prefix(lt_config_keys[i].path, depth, candidate, sizeof candidate);
    int d = edit_distance(path, candidate);
    if (d < best_d) best_d = d, snprintf(best, sizeof best, "%s", candidate);
  }
  if (best[0])
    return lt_fail(LT_ERR_CONFIG, "%s: unknown key '%s' (did you mean '%s'?)", where, path, best);
  return lt_fail(LT_ERR_CONFIG, "%s: unknown key '%s' (`longtrain config --docs` lists every key)",
                 where, path);
}

static const char *type_name(const lt_config_key *key) {
  switch (key->type) {
  case LT_CFG_INT:
  case LT_CFG_INT64:
    return "an integer";
  case LT_CFG_FLOAT:
    return "a number";
  case LT_CFG_BOOL:
    return "true or false";
  case LT_CFG_STRING:
    return "a string";
  case LT_CFG_ENUM:
    return "one of";
  }
  return "?";
}

static int check_range(const char *where, const lt_config_key *key, double v, const char *text) {
  if (v >= key->min && v <= key->max) return LT_OK;
  // Keys without a real upper limit carry the type's largest value, which says nothing useful.
  bool unbounded = key->max >= 1e300 || key->max == 2147483647.0 || key->max >= 1e15;
  if (unbounded && v < key->min)
    return lt_fail(LT_ERR_CONFIG, "%s: %s must be at least %g, got %s", where, key->path, key->min,
                   text);
  if (unbounded)
    return lt_fail(LT_ERR_CONFIG, "%s: %s must be at most %.15g, got %s", where, key->path,
                   key->max, text);
  return lt_fail(LT_ERR_CONFIG, "%s: %s must be between %g and %g, got %s", where, key->path,
                 key->min, key->max, text);
}

static int enum_index(const char *choices, const char *text) {
  int index = 0;
  size_t n = strlen(text);
  for (const char *p = choices; *p; index++) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, text, n) == 0) return index;
    if (!bar) break;
    p = bar + 1;
  }
  return -1;
}

// Parses `text` into the field of `key`. `plain` is false for quoted YAML scalars, which are
// strings and so the wrong type for a number or a bool.
static int set_value(lt_config *cfg, const lt_config_key *key, const char *text, bool plain,
                     const char *where) {
  char *field = (char *)cfg + key->offset;
  if (key->type != LT_CFG_STRING && !plain)
    return lt_fail(LT_ERR_CONFIG, "%s: %s expects %s%s%s, got the quoted string \"%s\"", where,
                   key->path, type_name(key), key->choices ? " " : "",
                   key->choices ? key->choices : "", text);
  if (key->type != LT_CFG_STRING &&
      (text[0] == '\0' || strcmp(text, "~") == 0 || strcasecmp(text, "null") == 0))
    return lt_fail(LT_ERR_CONFIG, "%s: %s has no value; give %s%s%s", where, key->path,
                   type_name(key), key->choices ? " " : "", key->choices ? key->choices : "");
  switch (key->type) {
  case LT_CFG_INT:
  case LT_CFG_INT64: {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end != '\0' || errno) { // accept integral scientific notation: steps: 1e6
      double d = strtod(text, &end);
      if (*end != '\0' || d != floor(d) || fabs(d) > 9.2e18)
        return lt_fail(LT_ERR_CONFIG, "%s: %s expects an integer, got '%s'", where, key->path,
                       text);
      v = (long long)d;
    }
    LT_TRY(check_range(where, key, (double)v, text));
    if (key->type == LT_CFG_INT)
      *(int *)field = (int)v;
    else
      *(int64_t *)field = v;
    return LT_OK;
  }
  case LT_CFG_FLOAT: {
    char *end;
    double v = strtod(text, &end);
    if (*end != '\0' || end == text || isnan(v))
      return lt_fail(LT_ERR_CONFIG, "%s: %s expects a number, got '%s'", where, key->path, text);
    LT_TRY(check_range(where, key, v, text));
    *(double *)field = v;
    return LT_OK;
  }
  case LT_CFG_BOOL: {
    static const char *yes[] = {"true", "yes", "on"}, *no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
      if (strcasecmp(text, yes[i]) == 0) return *(bool *)field = true, LT_OK;
      if (strcasecmp(text, no[i]) == 0) return *(bool *)field = false, LT_OK;
    }
    return lt_fail(LT_ERR_CONFIG, "%s: %s expects true or false, got '%s'", where, key->path, text);
  }
  case LT_CFG_STRING:
    if (strlen(text) >= key->size)
      return lt_fail(LT_ERR_CONFIG, "%s: %s is longer than %zu characters", where, key->path,
                     key->size - 1);
    strcpy(field, text);
    return LT_OK;
  case LT_CFG_ENUM: {
    int index = enum_index(key->choices, text);
    if (index < 0)
      return lt_fail(LT_ERR_CONFIG, "%s: %s must be one of %s, got '%s'", where, key->path,
                     key->choices, text);
    *(int *)field = index;
    return LT_OK;
  }
  }
  return lt_fail_internal(__FILE__, __LINE__, "bad config key type");
}

int lt_config_defaults(lt_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  strcpy(cfg->source, "<defaults>");
  for (int i = 0; i < lt_config_n_keys; i++)
    LT_TRY(set_value(cfg, &lt_config_keys[i], lt_config_keys[i].default_value, true, "<defaults>"));
  return LT_OK;
}

typedef struct walk_state {
  lt_config *cfg;
  yaml_document_t *doc;
  const char *name;
  bool seen[256];
} walk_state;

static const char *node_kind(const yaml_node_t *node) {
  return node->type == YAML_MAPPING_NODE    ? "a mapping"
         : node->type == YAML_SEQUENCE_NODE ? "a list"
                                            : "a value";
}

static int walk_mapping(walk_state *st, yaml_node_t *map, const char *prefix) {
  for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
       pair++) {
    yaml_node_t *k = yaml_document_get_node(st->doc, pair->key);
    yaml_node_t *v = yaml_document_get_node(st->doc, pair->value);
    char where[LT_PATH_MAX + 32];
    snprintf(where, sizeof where, "%s:%zu", st->name, k->start_mark.line + 1);
    if (k->type != YAML_SCALAR_NODE)
      return lt_fail(LT_ERR_CONFIG, "%s: keys must be plain names", where);
    char path[256];
    int n = snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "",
                     (const char *)k->data.scalar.value);
    if (n >= (int)sizeof path) return unknown_key(where, (const char *)k->data.scalar.value);
    const lt_config_key *key = find_key(path);
    if (key) {
      if (v->type != YAML_SCALAR_NODE)
        return lt_fail(LT_ERR_CONFIG, "%s: %s expects %s%s%s, got %s", where, path, type_name(key),
                       key->choices ? " " : "", key->choices ? key->choices : "", node_kind(v));
      int index = (int)(key - lt_config_keys);
      if (st->seen[index]) return lt_fail(LT_ERR_CONFIG, "%s: %s is given twice", where, path);
      st->seen[index] = true;
      snprintf(where, sizeof where, "%s:%zu", st->name, v->start_mark.line + 1);
      bool plain = v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
      LT_TRY(set_value(st->cfg, key, (const char *)v->data.scalar.value, plain, where));
    } else if (is_section(path)) {
      if (v->type != YAML_MAPPING_NODE)
        return lt_fail(LT_ERR_CONFIG, "%s: '%s' is a section and expects a mapping of keys, got %s",
                       where, path, node_kind(v));
      LT_TRY(walk_mapping(st, v, path));
    } else {
      return unknown_key(where, path);
    }
  }
  return LT_OK;
}

static int load_yaml(lt_config *cfg, const char *text, size_t len, const char *name) {
  yaml_parser_t parser;
  yaml_document_t doc;
  if (!yaml_parser_initialize(&parser)) return lt_fail(LT_ERR_MEMORY, "%s: out of memory", name);
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    // libyaml notices an unclosed bracket or quote only further down; the context mark says
    // where the construct it was parsing began, which is where the fix usually goes.
    char started[64] = "";
    if (parser.context)
      snprintf(started, sizeof started, " started at line %zu", parser.context_mark.line + 1);
    int rc = lt_fail(LT_ERR_CONFIG, "%s:%zu:%zu: YAML syntax error: %s%s%s%s", name,
                     parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                     parser.problem ? parser.problem : "malformed document",
                     parser.context ? " " : "", parser.context ? parser.context : "", started);
    yaml_parser_delete(&parser);
    return rc;
  }
  int rc = LT_OK;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root && !(root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0)) {
    if (root->type != YAML_MAPPING_NODE) {
      rc = lt_fail(LT_ERR_CONFIG,
                   "%s: the top level must be a mapping of sections (model:, train:, "
                   "...), got %s",
                   name, node_kind(root));
    } else {
      walk_state st = {.cfg = cfg, .doc = &doc, .name = name};
      rc = walk_mapping(&st, root, "");
    }
  }
  yaml_document_delete(&doc);
  // A second document ("---" then more keys) would otherwise be ignored without a word.
  if (rc == LT_OK && yaml_parser_load(&parser, &doc)) {
    yaml_node_t *extra = yaml_document_get_root_node(&doc);
    if (extra && !(extra->type == YAML_SCALAR_NODE && extra->data.scalar.length == 0))
      rc = lt_fail(LT_ERR_CONFIG,
                   "%s:%zu: a second YAML document ('---') is not read: put every key in one", name,
                   extra->start_mark.line + 1);
    yaml_document_delete(&doc);
  }
  yaml_parser_delete(&parser);
  return rc;
}

int lt_config_set(lt_config *cfg, const char *assignment) {
  char where[300];
  snprintf(where, sizeof where, "--set %s", assignment);
  const char *eq = strchr(assignment, '=');
  if (!eq || eq == assignment)
    return lt_fail(LT_ERR_CONFIG, "%s: expected key=value, e.g. --set train.lr=1e-3", where);
  char path[256];
  size_t n = (size_t)(eq - assignment);
  if (n >= sizeof path) return unknown_key(where, assignment);
  memcpy(path, assignment, n);
  path[n] = '\0';
  const lt_config_key *key = find_key(path);
  if (!key) {
    if (is_section(path))
      return lt_fail(LT_ERR_CONFIG, "%s: '%s' is a section; set one of its keys", where, path);
    return unknown_key(where, path);
  }
  return set_value(cfg, key, eq + 1, true, where);
}

int lt_config_load_string(lt_config *cfg, const char *yaml, const char *name, int n_overrides,
                          char *const *overrides) {
  LT_TRY(lt_config_defaults(cfg));
  snprintf(cfg->source, sizeof cfg->source, "%s", name);
  LT_TRY(load_yaml(cfg, yaml, strlen(yaml), name));
  for (int i = 0; i < n_overrides; i++) LT_TRY(lt_config_set(cfg, overrides[i]));
  // Cross-key messages name cfg->source: say so when a key may have come from the command line.
  if (n_overrides > 0) {
    size_t len = strlen(cfg->source);
    snprintf(cfg->source + len, sizeof cfg->source - len, " with --set overrides");
  }
  return lt_config_validate(cfg);
}

int lt_config_load(lt_config *cfg, const char *path, int n_overrides, char *const *overrides) {
  if (!path) return lt_config_load_string(cfg, "", "<defaults>", n_overrides, overrides);
  FILE *f = fopen(path, "rb");
  if (!f) return lt_fail(LT_ERR_CONFIG, "%s: cannot open config file: %s", path, strerror(errno));
  char *text = NULL;
  size_t len = 0, cap = 0, got;
  char chunk[4096];
  while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (len + got + 1 > cap) {
      cap = (len + got + 1) * 2;
      char *grown = realloc(text, cap);
      if (!grown) {
        free(text);
        fclose(f);
        return lt_fail(LT_ERR_MEMORY, "%s: out of memory reading the config", path);
      }
      text = grown;
    }
    memcpy(text + len, chunk, got);
    len += got;
  }
  int read_error = ferror(f), read_errno = errno;
  fclose(f);
  if (read_error) {
    free(text);
    return lt_fail(LT_ERR_CONFIG, "%s: cannot read the config file: %s", path,
                   strerror(read_errno));
  }
  if (!text)
    text = calloc(1, 1);
  else
    text[len] = '\0';
  if (strlen(text) != len) {
    free(text);
    return lt_fail(LT_ERR_CONFIG, "%s: contains a NUL byte; is it a YAML file?", path);
  }
  int rc = lt_config_load_string(cfg, text, path, n_overrides, overrides);
  free(text);
  return rc;
}

// --- emitting ---

typedef struct text_buf {
  char *data;
  size_t len, cap;
  bool failed;
} text_buf;

static void append(text_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append(text_buf *b, const char *fmt, ...) {
  if (b->failed) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (b->len + (size_t)n + 1 > b->cap) {
    size_t cap = (b->len + (size_t)n + 1) * 2;
    char *grown = realloc(b->data, cap);
    if (!grown) {
      b->failed = true;
      return;
    }
    b->data = grown, b->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

static void append_scalar(text_buf *b, const lt_config *cfg, const lt_config_key *key) {
  const char *field = (const char *)cfg + key->offset;
  switch (key->type) {
  case LT_CFG_INT:
    append(b, "%d", *(const int *)field);
    break;
  case LT_CFG_INT64:
    append(b, "%lld", (long long)*(const int64_t *)field);
    break;
  case LT_CFG_FLOAT:
    append(b, "%.17g", *(const double *)field);
    break; // round-trips exactly
  case LT_CFG_BOOL:
    append(b, "%s", *(const bool *)field ? "true" : "false");
    break;
  case LT_CFG_STRING:
    append(b, "\"");
    for (const char *p = field; *p; p++) {
      if (*p == '"' || *p == '\\')
        append(b, "\\%c", *p);
      else if ((unsigned char)*p < 0x20)
        append(b, "\\x%02x", (unsigned char)*p);
      else
        append(b, "%c", *p);
    }
    append(b, "\"");
    break;
  case LT_CFG_ENUM: {
    int index = *(const int *)field;
    const char *p = key->choices;
    for (int i = 0; i < index; i++) p = strchr(p, '|') + 1;
    const char *bar = strchr(p, '|');
    append(b, "%.*s", bar ? (int)(bar - p) : (int)strlen(p), p);
    break;
  }
  }
}

int lt_config_to_yaml(const lt_config *cfg, char **out) {
  text_buf b = {0};
  const char *previous = "";
  for (int i = 0; i < lt_config_n_keys; i++) {
    const char *path = lt_config_keys[i].path;
    // Open each section that this key does not share with the previous one.
    size_t common = 0;
    for (size_t j = 0; path[j] && path[j] == previous[j]; j++)
      if (path[j] == '.') common = j + 1;
    int depth = 0;
    for (size_t j = 0; j < common; j++) depth += path[j] == '.';
    const char *part = path + common;
    for (const char *dot; (dot = strchr(part, '.')); part = dot + 1, depth++)
      append(&b, "%*s%.*s:\n", 2 * depth, "", (int)(dot - part), part);
    append(&b, "%*s%s: ", 2 * depth, "", part);
    append_scalar(&b, cfg, &lt_config_keys[i]);
    append(&b, "\n");
    previous = path;
  }
  if (b.failed || !b.data) {
    free(b.data);
    return lt_fail(LT_ERR_MEMORY, "out of memory writing the resolved config");
  }
  *out = b.data;
  return LT_OK;
}

void lt_config_format_value(const lt_config *cfg, const lt_config_key *key, char *buf, size_t cap) {
  text_buf b = {0};
  append_scalar(&b, cfg, key);
  snprintf(buf, cap, "%s", b.failed || !b.data ? "?" : b.data);
  free(b.data);
}

void lt_config_print_docs(void) {
  printf("| key | type | default | meaning |\n| --- | --- | --- | --- |\n");
  for (int i = 0; i < lt_config_n_keys; i++) {
    const lt_config_key *k = &lt_config_keys[i];
    printf("| `%s` | ", k->path);
    if (k->type == LT_CFG_ENUM) // "a|b|c" would split the table's cells
      for (const char *p = k->choices; *p; p++) fputs(*p == '|' ? " / " : (char[]){*p, 0}, stdout);
    else
      fputs(k->type == LT_CFG_FLOAT    ? "float"
            : k->type == LT_CFG_BOOL   ? "bool"
            : k->type == LT_CFG_STRING ? "string"
                                       : "int",
            stdout);
    printf(" | `%s` | %s |\n", k->default_value[0] ? k->default_value : "\"\"", k->doc);
  }
}
