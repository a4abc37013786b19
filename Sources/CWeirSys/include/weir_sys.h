/* System calls that do not import cleanly into Swift (variadic fcntl, _GNU_SOURCE-only splice). */
#pragma once
#include <stddef.h>
int weir_pipe_nonblock(int fds[2]);
long weir_splice_nonblock(int in_fd, int out_fd, size_t length);
int weir_set_pipe_size(int fd, int bytes);
int weir_set_nonblock(int fd);
/* The epoll backend's system calls (see sys.c). */
int weir_epoll_create(void);
/* Watches fd for input, output and peer close, edge-triggered, once for its life. */
int weir_epoll_add(int epfd, int fd);
/* Waits up to timeout_ns (0: no wait) and fills fds/events; returns the count (0 on EINTR) or -errno. */
int weir_epoll_wait(int epfd, int *fds, unsigned *events, int max, long long timeout_ns);
unsigned weir_epoll_in(void);
unsigned weir_epoll_out(void);
unsigned weir_epoll_closed(void);
unsigned weir_epoll_err(void);
/* Readiness now, without waiting: the revents of one poll(2), or -errno. */
int weir_poll_now(int fd, short events);
/* The pending error of a socket (SO_ERROR): 0 when there is none. */
int weir_socket_error(int fd);
int weir_accept_nonblock(int fd);
/* A single-threaded allocator of recycled blocks by size class (see slab.c), for libraries that
 * take an allocator (nghttp2's nghttp2_mem): in steady state their per-stream allocations come
 * back from its free lists instead of the heap. The signatures are nghttp2_mem's. */
void *weir_slab_new(void);
void *weir_slab_malloc(size_t size, void *slab);
void weir_slab_free(void *ptr, void *slab);
void *weir_slab_calloc(size_t count, size_t size, void *slab);
void *weir_slab_realloc(void *ptr, size_t size, void *slab);
