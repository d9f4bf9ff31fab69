// libFuzzer target: the YAML config parser. Whatever the bytes, loading returns a status with a
// one-line message; a config that loads prints as YAML that loads back to the same config.
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';
  lt_config cfg;
  if (lt_config_load_string(&cfg, text, "fuzz.yaml", 0, NULL) == LT_OK) {
    char *yaml;
    lt_config again;
    if (lt_config_to_yaml(&cfg, &yaml) != LT_OK) abort();
    if (lt_config_load_string(&again, yaml, "resolved.yaml", 0, NULL) != LT_OK) abort();
    if (memcmp(&cfg, &again, offsetof(lt_config, source)) != 0) abort();
    free(yaml);
  } else if (strchr(lt_error_message(), '\n')) {
    abort(); // every error is one line
  }
  lt_error_clear();
  free(text);
  return 0;
}
