/* System calls that do not import cleanly into Swift (variadic fcntl, _GNU_SOURCE-only splice). */
#pragma once
#include <stddef.h>
int weir_pipe_nonblock(int fds[2]);
long weir_splice_nonblock(int in_fd, int out_fd, size_t length);
int weir_set_pipe_size(int fd, int bytes);
int weir_set_nonblock(int fd);
