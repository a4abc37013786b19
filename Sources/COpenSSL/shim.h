/* OpenSSL for Weir's TLS. Macros do not import into Swift: the few Weir uses are wrapped here as
 * inline functions. */
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/ocsp.h>
#include <string.h>

static inline long weir_ssl_ctx_set_min_proto(SSL_CTX *ctx, int version) { return SSL_CTX_set_min_proto_version(ctx, version); }
static inline long weir_ssl_ctx_set_max_proto(SSL_CTX *ctx, int version) { return SSL_CTX_set_max_proto_version(ctx, version); }
/* OCSP stapling: the status callback, and a copy of the DER response handed to the connection
 * (OpenSSL takes ownership of the copy). */
static inline long weir_ssl_ctx_set_status_cb(SSL_CTX *ctx, int (*cb)(SSL *, void *), void *arg) {
    SSL_CTX_set_tlsext_status_arg(ctx, arg);
    return SSL_CTX_set_tlsext_status_cb(ctx, cb);
}
static inline int weir_ssl_staple(SSL *ssl, const unsigned char *der, long length) {
    unsigned char *copy = OPENSSL_malloc(length);
    if (copy == NULL) return 0;
    memcpy(copy, der, length);
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, length) != 1) { OPENSSL_free(copy); return 0; }
    return 1;
}
/* -1: not an OCSP response; else its response status (0: successful). */
static inline int weir_ocsp_response_status(const unsigned char *der, long length) {
    const unsigned char *p = der;
    OCSP_RESPONSE *r = d2i_OCSP_RESPONSE(NULL, &p, length);
    if (r == NULL) return -1;
    int status = OCSP_response_status(r);
    OCSP_RESPONSE_free(r);
    return status;
}
static inline uint64_t weir_ssl_ctx_prefer_server_ciphers(SSL_CTX *ctx) { return SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE); }
static inline long weir_ssl_ctx_set_groups_list(SSL_CTX *ctx, const char *list) { return SSL_CTX_set1_groups_list(ctx, list); }
static inline long weir_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline long weir_ssl_ctx_set_servername_callback(SSL_CTX *ctx, int (*cb)(SSL *, int *, void *), void *arg) {
    SSL_CTX_set_tlsext_servername_arg(ctx, arg);
    return SSL_CTX_set_tlsext_servername_callback(ctx, cb);
}
static inline long weir_ssl_set_host_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }
static inline int weir_tls1_2_version(void) { return TLS1_2_VERSION; }
static inline int weir_tls1_3_version(void) { return TLS1_3_VERSION; }
static inline int weir_tls1_1_version(void) { return TLS1_1_VERSION; }
static inline int weir_tls1_version(void) { return TLS1_VERSION; }
static inline int weir_nametype_host(void) { return TLSEXT_NAMETYPE_host_name; }
static inline int weir_tlsext_err_ok(void) { return SSL_TLSEXT_ERR_OK; }
static inline int weir_tlsext_err_noack(void) { return SSL_TLSEXT_ERR_NOACK; }
static inline int weir_tlsext_err_alert_fatal(void) { return SSL_TLSEXT_ERR_ALERT_FATAL; }
static inline long weir_mode_partial_and_moving(void) { return SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; }
static inline long weir_ssl_ctx_session_cache_off(SSL_CTX *ctx) { return SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); }
static inline int weir_verify_peer_required(void) { return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT; }
static inline int weir_verify_peer(void) { return SSL_VERIFY_PEER; }
static inline int weir_verify_none(void) { return SSL_VERIFY_NONE; }
static inline size_t weir_bio_pending(BIO *b) { return BIO_ctrl_pending(b); }
static inline int weir_err_reason(unsigned long e) { return ERR_GET_REASON(e); }
