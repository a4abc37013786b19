#ifndef WEIR_TLS_H
#define WEIR_TLS_H
#include <openssl/ssl.h>

/* Session ticket keys for a group of server contexts (one listener's certificates): a current
 * and a previous key, rotated every `rotate_seconds` by the first handshake that notices. Tickets
 * are sealed with the current key and opened with either (one opened with the previous key is
 * renewed), so a ticket lives between one and two rotations. Thread-safe: shards share them. */
typedef struct weir_ticket_keys weir_ticket_keys;

weir_ticket_keys *weir_ticket_keys_new(long rotate_seconds);
/* Makes `ctx` use `keys` (several contexts may share one set). */
int weir_ticket_keys_install(SSL_CTX *ctx, weir_ticket_keys *keys);
void weir_ticket_keys_free(weir_ticket_keys *keys);
/* Rotations so far (for tests and stats). */
long weir_ticket_keys_rotations(weir_ticket_keys *keys);

/* PEM from memory: a certificate chain (leaf first), a private key, CA certificates to trust
 * (and, with `advertise`, name to clients as acceptable issuers). 1 (or the CA count) on
 * success, 0 on failure with OpenSSL's error queue saying why. */
int weir_ctx_use_pem_chain(SSL_CTX *ctx, const char *pem, long length);
int weir_ctx_use_pem_key(SSL_CTX *ctx, const char *pem, long length);
int weir_ctx_trust_pem(SSL_CTX *ctx, const char *pem, long length, int advertise);
/* Encrypted keys fail to load instead of prompting for a passphrase on the terminal. */
void weir_ctx_no_password(SSL_CTX *ctx);
/* Refuse TLS 1.2 renegotiation (as Envoy does): a client context's writes never wait on one. */
void weir_ctx_no_renegotiation(SSL_CTX *ctx);

/* Subject alt name matchers on a context's peer certificates (Envoy's match_subject_alt_names):
 * with any set, verification fails unless one of them matches one SAN of the leaf certificate.
 * `kind` limits the SAN type (any, DNS, URI, email, IP in text form); `op` is how `value`
 * compares. Set `mode` with weir_ctx_set_verify, which installs the check. */
enum { WEIR_SAN_ANY = 0, WEIR_SAN_DNS = 1, WEIR_SAN_URI = 2, WEIR_SAN_EMAIL = 3, WEIR_SAN_IP = 4 };
enum { WEIR_SAN_EXACT = 0, WEIR_SAN_PREFIX = 1, WEIR_SAN_SUFFIX = 2, WEIR_SAN_CONTAINS = 3 };
int weir_ctx_add_san_matcher(SSL_CTX *ctx, int kind, int op, int ignore_case, const char *value, size_t length);
void weir_ctx_set_verify(SSL_CTX *ctx, int mode);

/* Envoy's X-Forwarded-Client-Cert element for a connection's peer certificate:
 * By=<this side's URI SANs>;Hash=<SHA-256 of the peer certificate, hex>, then with `details`
 * Subject="<RFC 2253>", URI=<each URI SAN>, DNS=<each DNS SAN>. Values that cannot go into a
 * header as they are (controls, quotes, separators) are left out. Its length; 0 when the peer
 * sent no certificate; -1 when it does not fit in `cap`. */
enum { WEIR_XFCC_SUBJECT = 1, WEIR_XFCC_URI = 2, WEIR_XFCC_DNS = 4 };
int weir_xfcc_element(SSL *ssl, int details, char *out, size_t cap);

#endif
