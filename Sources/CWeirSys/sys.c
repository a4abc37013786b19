#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <poll.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/socket.h>
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

/* epoll for the fallback backend. struct epoll_event is packed on x86-64, which Swift imports
 * poorly: these take and give plain arrays. */
int weir_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int weir_epoll_add(int epfd, int fd) {
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data = { .fd = fd } };
    int rc = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (rc != 0 && errno == EEXIST) rc = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
    return rc;
}

int weir_epoll_wait(int epfd, int *fds, unsigned *events, int max, long long timeout_ns) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    /* epoll_pwait2 (Linux 5.11) waits in nanoseconds; where the kernel lacks it or a seccomp
     * profile older than it refuses it (EPERM), epoll_wait in milliseconds, from then on. */
    static int pwait2_refused = 0;
    int n = -1;
    if (!__atomic_load_n(&pwait2_refused, __ATOMIC_RELAXED)) {
        struct timespec ts = { .tv_sec = timeout_ns / 1000000000LL, .tv_nsec = timeout_ns % 1000000000LL };
        n = epoll_pwait2(epfd, evs, max, &ts, NULL);
        if (n < 0 && errno != EINTR) __atomic_store_n(&pwait2_refused, 1, __ATOMIC_RELAXED);
    }
    if (n < 0 && __atomic_load_n(&pwait2_refused, __ATOMIC_RELAXED)) {
        long long ms = (timeout_ns + 999999LL) / 1000000LL;
        n = epoll_wait(epfd, evs, max, (int)(ms > 2147483647LL ? 2147483647LL : ms));
    }
    if (n < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) { fds[i] = evs[i].data.fd; events[i] = evs[i].events; }
    return n;
}

unsigned weir_epoll_in(void) { return EPOLLIN; }
unsigned weir_epoll_out(void) { return EPOLLOUT; }
unsigned weir_epoll_closed(void) { return EPOLLRDHUP | EPOLLHUP | EPOLLERR; }
unsigned weir_epoll_err(void) { return EPOLLHUP | EPOLLERR; }

int weir_poll_now(int fd, short events) {
    struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
    int n = poll(&p, 1, 0);
    return n < 0 ? -errno : (n == 0 ? 0 : p.revents);
}

int weir_socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
}

int weir_accept_nonblock(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }
