#ifndef LT_PREPARE_H
#define LT_PREPARE_H

// `longtrain prepare ARGS`: returns an lt_status.
int lt_prepare_main(int argc, char **argv);

#endif
