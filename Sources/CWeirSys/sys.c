#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include "weir_sys.h"

int weir_pipe_nonblock(int fds[2]) { return pipe2(fds, O_NONBLOCK | O_CLOEXEC); }

long weir_splice_nonblock(int in_fd, int out_fd, size_t length) {
    return splice(in_fd, NULL, out_fd, NULL, length, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
}

int weir_set_pipe_size(int fd, int bytes) { return fcntl(fd, F_SETPIPE_SZ, bytes); }

int weir_set_nonblock(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? flags : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}
