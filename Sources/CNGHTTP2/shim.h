/* nghttp2 (Debian's libnghttp2-dev) for Swift: the HTTP/2 framing, HPACK and stream state machine
 * Weir's HTTP/2 session drives without any I/O of its own. */
#include <sys/types.h>
#include <nghttp2/nghttp2.h>

/* Frame fields sit in a union; these reach them without Swift's union accessors. */
static inline uint8_t weir_h2_frame_type(const nghttp2_frame *f) { return f->hd.type; }
static inline uint8_t weir_h2_frame_flags(const nghttp2_frame *f) { return f->hd.flags; }
static inline int32_t weir_h2_frame_stream(const nghttp2_frame *f) { return f->hd.stream_id; }
static inline int weir_h2_headers_category(const nghttp2_frame *f) { return (int)f->headers.cat; }
static inline uint32_t weir_h2_goaway_error(const nghttp2_frame *f) { return f->goaway.error_code; }
static inline uint32_t weir_h2_rst_error(const nghttp2_frame *f) { return f->rst_stream.error_code; }
