#include "core/error.h"

#include <stdio.h>
#include <string.h>

// One message per thread: the CPU kernels run OpenMP threads, and a failing worker must not
// overwrite what the main thread reports.
static _Thread_local char message[1024];

// Messages are one line, but they quote what the user wrote, which may hold line breaks (a
// quoted YAML string, a file name): control characters are written as escapes instead.
static void escape_controls(void) {
  char raw[sizeof message];
  memcpy(raw, message, sizeof raw);
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)raw; *p && n + 5 < sizeof message; p++) {
    if (*p == '\n')
      n += (size_t)snprintf(message + n, sizeof message - n, "\\n");
    else if (*p < 0x20 || *p == 0x7f)
      n += (size_t)snprintf(message + n, sizeof message - n, "\\x%02x", *p);
    else
      message[n++] = (char)*p;
  }
  message[n] = '\0';
}

int lt_failv(int code, const char *fmt, va_list ap) {
  vsnprintf(message, sizeof message, fmt, ap);
  escape_controls();
  return code;
}

int lt_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lt_failv(code, fmt, ap);
  va_end(ap);
  return code;
}

int lt_fail_internal(const char *file, int line, const char *fmt, ...) {
  char what[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  snprintf(message, sizeof message, "internal error at %s:%d: %s (please report this)", file, line,
           what);
  return LT_ERR_INTERNAL;
}

int lt_error_context(int code, const char *fmt, ...) {
  char prefix[512], old[sizeof message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, message, sizeof old);
  // prefix + ": " + old, cut to the buffer (a long message loses its tail, never its start).
  size_t n = strlen(prefix);
  if (n > sizeof message - 1) n = sizeof message - 1;
  memcpy(message, prefix, n);
  size_t room = sizeof message - 1 - n;
  const char *rest[2] = {": ", old};
  for (int i = 0; i < 2; i++) {
    size_t len = strlen(rest[i]) < room ? strlen(rest[i]) : room;
    memcpy(message + n, rest[i], len);
    n += len, room -= len;
  }
  message[n] = '\0';
  escape_controls();
  return code;
}

const char *lt_error_message(void) {
  return message[0] ? message : "no error";
}

void lt_error_clear(void) {
  message[0] = '\0';
}

const char *lt_status_name(int code) {
  static const char *names[] = {"ok", "internal", "usage",  "config", "data",    "checkpoint",
                                "io", "memory",   "device", "comm",   "numeric", "stopped"};
  if (code >= 0 && code < (int)(sizeof names / sizeof names[0])) return names[code];
  return "unknown";
}
