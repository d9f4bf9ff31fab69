#ifndef LT_EVAL_H
#define LT_EVAL_H

// `longtrain eval --task mqar|passkey CKPT`: a checkpoint's accuracy on held-out sequences of a
// synthetic task (data/tasks.h); returns an lt_status.
int lt_eval_main(int argc, char **argv);

#endif
