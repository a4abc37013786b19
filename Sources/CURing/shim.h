/* liburing for Swift. liburing.h defines _GNU_SOURCE/_XOPEN_SOURCE before its own includes, which
 * breaks fd_set in debug builds unless these come first. */
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <errno.h>
#include <liburing.h>

/* Fields in anonymous unions and flag macros built from enums do not import; these one-liners
 * reach them. */
static inline void weir_sqe_set_buf_group(struct io_uring_sqe *sqe, unsigned short group) {
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
}
/* Total bytes a multishot recv may receive before the kernel ends it (sqe->optlen, Linux 6.16+;
 * liburing 2.3 names that field file_index). 0 means no limit. */
static inline void weir_sqe_set_recv_limit(struct io_uring_sqe *sqe, unsigned bytes) { sqe->file_index = bytes; }
static inline void weir_sqe_set_link(struct io_uring_sqe *sqe) { sqe->flags |= IOSQE_IO_LINK; }
static inline void weir_sqe_set_skip_success(struct io_uring_sqe *sqe) { sqe->flags |= IOSQE_CQE_SKIP_SUCCESS; }

static inline unsigned weir_cqe_f_more(void) { return IORING_CQE_F_MORE; }
static inline unsigned weir_cqe_f_buffer(void) { return IORING_CQE_F_BUFFER; }
static inline unsigned weir_cqe_buffer_shift(void) { return IORING_CQE_BUFFER_SHIFT; }

static inline unsigned weir_setup_single_issuer(void) { return IORING_SETUP_SINGLE_ISSUER; }
static inline unsigned weir_setup_defer_taskrun(void) { return IORING_SETUP_DEFER_TASKRUN; }
static inline unsigned weir_setup_coop_taskrun(void) { return IORING_SETUP_COOP_TASKRUN; }
static inline unsigned weir_setup_submit_all(void) { return IORING_SETUP_SUBMIT_ALL; }

/* A pointer to the n-th CQE after the head, so Swift can walk a batch without the
 * io_uring_for_each_cqe macro. */
static inline struct io_uring_cqe *weir_cqe_at(struct io_uring *ring, unsigned head) {
    return &ring->cq.cqes[(head & ring->cq.ring_mask) << io_uring_cqe_shift(ring)];
}
static inline unsigned weir_cq_head(struct io_uring *ring) { return *ring->cq.khead; }
static inline unsigned weir_cq_ready(struct io_uring *ring) { return io_uring_cq_ready(ring); }

/* eventfd and splice may not import from Glibc: wrap them. */
static inline int weir_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
static inline int weir_errno(void) { return errno; }

