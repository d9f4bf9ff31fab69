#ifndef LT_INFO_H
#define LT_INFO_H

// `longtrain info CKPT`: returns an lt_status.
int lt_info_main(int argc, char **argv);

#endif
