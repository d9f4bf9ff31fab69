// Logging. By default only rank 0 prints info; warnings and errors print from every rank with
// the rank in front, so a failure on rank 5 of 64 is not lost.
#ifndef LT_LOG_H
#define LT_LOG_H

typedef enum lt_log_level { LT_LOG_DEBUG, LT_LOG_INFO, LT_LOG_WARN, LT_LOG_ERROR } lt_log_level;

void lt_log_set_rank(int rank, int world);
void lt_log_set_level(lt_log_level level);
void lt_log(lt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define lt_debug(...) lt_log(LT_LOG_DEBUG, __VA_ARGS__)
#define lt_info(...)  lt_log(LT_LOG_INFO, __VA_ARGS__)
#define lt_warn(...)  lt_log(LT_LOG_WARN, __VA_ARGS__)
#define lt_error(...) lt_log(LT_LOG_ERROR, __VA_ARGS__)

#endif
