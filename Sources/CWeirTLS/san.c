// Subject alt name checks on the peer's certificate, as Envoy's match_subject_alt_names and
// match_typed_subject_alt_names ask: the handshake fails unless one matcher matches one of the
// leaf certificate's SANs. The matchers hang on the SSL_CTX (set when a snapshot compiles, read
// only afterwards); the check runs inside OpenSSL's verification, so a mismatch fails the
// handshake with a certificate alert like any other verification failure.
#include "weir_tls.h"
#include <arpa/inet.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct weir_san {
    struct weir_san *next;
    int kind, op, ignore_case;
    size_t length;
    char value[];
} weir_san;

static int san_index = -1;
static pthread_once_t san_once = PTHREAD_ONCE_INIT;

static void free_sans(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    weir_san *s = ptr;
    while (s) { weir_san *n = s->next; free(s); s = n; }
}

static void make_index(void) { san_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_sans); }

static int equal(const char *a, size_t an, const char *b, size_t bn, int icase) {
    if (an != bn) return 0;
    return icase ? strncasecmp(a, b, an) == 0 : memcmp(a, b, an) == 0;
}

static int contains(const char *hay, size_t hn, const char *needle, size_t nn, int icase) {
    if (nn == 0) return 1;
    for (size_t i = 0; i + nn <= hn; i++) if (equal(hay + i, nn, needle, nn, icase)) return 1;
    return 0;
}

static int matches_value(const weir_san *m, const char *san, size_t n) {
    switch (m->op) {
    case WEIR_SAN_EXACT: return equal(san, n, m->value, m->length, m->ignore_case);
    case WEIR_SAN_PREFIX: return n >= m->length && equal(san, m->length, m->value, m->length, m->ignore_case);
    case WEIR_SAN_SUFFIX: return n >= m->length && equal(san + n - m->length, m->length, m->value, m->length, m->ignore_case);
    case WEIR_SAN_CONTAINS: return contains(san, n, m->value, m->length, m->ignore_case);
    default: return 0;
    }
}

/* A DNS SAN "*.example.com" stands for one label: it matches an exact "a.example.com". */
static int matches_dns(const weir_san *m, const char *san, size_t n) {
    if (matches_value(m, san, n)) return 1;
    if (m->op != WEIR_SAN_EXACT || n < 3 || san[0] != '*' || san[1] != '.') return 0;
    const char *dot = memchr(m->value, '.', m->length);
    if (!dot || dot == m->value) return 0;
    size_t rest = m->length - (size_t)(dot - m->value);
    return equal(dot, rest, san + 1, n - 1, 1);
}

static int matches_name(const weir_san *m, const GENERAL_NAME *g) {
    int kind;
    switch (g->type) {
    case GEN_DNS: kind = WEIR_SAN_DNS; break;
    case GEN_URI: kind = WEIR_SAN_URI; break;
    case GEN_EMAIL: kind = WEIR_SAN_EMAIL; break;
    case GEN_IPADD: kind = WEIR_SAN_IP; break;
    default: return 0;
    }
    if (m->kind != WEIR_SAN_ANY && m->kind != kind) return 0;
    if (kind == WEIR_SAN_IP) {
        char text[INET6_ADDRSTRLEN];
        int len = ASN1_STRING_length(g->d.iPAddress);
        const unsigned char *bytes = ASN1_STRING_get0_data(g->d.iPAddress);
        if (len == 4) inet_ntop(AF_INET, bytes, text, sizeof text);
        else if (len == 16) inet_ntop(AF_INET6, bytes, text, sizeof text);
        else return 0;
        return matches_value(m, text, strlen(text));
    }
    const ASN1_IA5STRING *s = g->d.ia5;
    const char *data = (const char *)ASN1_STRING_get0_data(s);
    size_t n = (size_t)ASN1_STRING_length(s);
    if (memchr(data, 0, n)) return 0;  /* an embedded NUL never matches */
    return kind == WEIR_SAN_DNS ? matches_dns(m, data, n) : matches_value(m, data, n);
}

static int cert_matches_sans(X509 *cert, const weir_san *list) {
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (!names) return 0;
    int found = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(names) && !found; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        for (const weir_san *m = list; m && !found; m = m->next) found = matches_name(m, g);
    }
    GENERAL_NAMES_free(names);
    return found;
}

static int verify_cb(int ok, X509_STORE_CTX *store) {
    if (!ok || X509_STORE_CTX_get_error_depth(store) != 0) return ok;
    pthread_once(&san_once, make_index);
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    if (!ssl) return ok;
    const weir_san *list = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), san_index);
    if (!list) return ok;
    X509 *cert = X509_STORE_CTX_get_current_cert(store);
    if (cert && cert_matches_sans(cert, list)) return 1;
    /* Reported as the application's own check failing (not an issuer or host name problem). */
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

int weir_ctx_add_san_matcher(SSL_CTX *ctx, int kind, int op, int ignore_case, const char *value, size_t length) {
    pthread_once(&san_once, make_index);
    if (san_index < 0) return 0;
    weir_san *s = malloc(sizeof *s + length + 1);
    if (!s) return 0;
    s->kind = kind; s->op = op; s->ignore_case = ignore_case; s->length = length;
    memcpy(s->value, value, length);
    s->value[length] = 0;
    /* Appended, so matchers keep their order (the first that matches ends the search). */
    weir_san *head = SSL_CTX_get_ex_data(ctx, san_index);
    s->next = NULL;
    if (!head) {
        if (!SSL_CTX_set_ex_data(ctx, san_index, s)) { free(s); return 0; }
    } else {
        while (head->next) head = head->next;
        head->next = s;
    }
    return 1;
}

void weir_ctx_set_verify(SSL_CTX *ctx, int mode) { SSL_CTX_set_verify(ctx, mode, verify_cb); }

/* XFCC (Envoy's x-forwarded-client-cert element) for a connection's peer. */
static int put(char *out, size_t cap, size_t *n, const char *s, size_t len) {
    if (*n + len > cap) return 0;
    memcpy(out + *n, s, len);
    *n += len;
    return 1;
}

/* A value that can go into a header as is: no controls, no quotes, no XFCC separators. */
static int plain(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch >= 0x7f || ch == '"' || ch == ',' || ch == ';' || ch == '\\') return 0;
    }
    return 1;
}

/* Each SAN of `type` as KEY=value; with `first`, only the first, and KEY= when there is none
 * (Envoy's URI). */
static int put_sans(X509 *cert, int type, const char *key, char *out, size_t cap, size_t *n, int first) {
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int ok = 1, written = 0;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names) && ok && !(first && written); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != type) continue;
        const char *data = (const char *)ASN1_STRING_get0_data(g->d.ia5);
        size_t len = (size_t)ASN1_STRING_length(g->d.ia5);
        if (!plain(data, len)) continue;  /* left out rather than smuggled into a header */
        ok = put(out, cap, n, ";", *n ? 1 : 0) && put(out, cap, n, key, strlen(key)) && put(out, cap, n, data, len);
        written = 1;
    }
    if (names) GENERAL_NAMES_free(names);
    if (ok && first && !written) ok = put(out, cap, n, ";", *n ? 1 : 0) && put(out, cap, n, key, strlen(key));
    return ok;
}

int weir_xfcc_element(SSL *ssl, int details, char *out, size_t cap) {
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (!peer) return 0;
    size_t n = 0;
    int ok = 1;
    X509 *local = SSL_get_certificate(ssl);
    if (local) ok = put_sans(local, GEN_URI, "By=", out, cap, &n, 0);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (ok && X509_digest(peer, EVP_sha256(), md, &mdlen)) {
        char hex[2 * EVP_MAX_MD_SIZE];
        static const char digits[] = "0123456789abcdef";
        for (unsigned int i = 0; i < mdlen; i++) { hex[2 * i] = digits[md[i] >> 4]; hex[2 * i + 1] = digits[md[i] & 15]; }
        ok = put(out, cap, &n, ";", n ? 1 : 0) && put(out, cap, &n, "Hash=", 5) && put(out, cap, &n, hex, 2 * mdlen);
    }
    if (ok && (details & WEIR_XFCC_SUBJECT)) {
        BIO *b = BIO_new(BIO_s_mem());
        char *text = NULL;
        long len = 0;
        if (b && X509_NAME_print_ex(b, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253) >= 0) len = BIO_get_mem_data(b, &text);
        ok = put(out, cap, &n, ";", n ? 1 : 0) && put(out, cap, &n, "Subject=\"", 9);
        for (long i = 0; ok && i < len; i++) {
            char ch = text[i];
            if ((unsigned char)ch < 0x20 || (unsigned char)ch >= 0x7f || ch == '"' || ch == '\\') ch = '?';
            ok = put(out, cap, &n, &ch, 1);
        }
        ok = ok && put(out, cap, &n, "\"", 1);
        BIO_free(b);
    }
    if (ok && (details & WEIR_XFCC_URI)) ok = put_sans(peer, GEN_URI, "URI=", out, cap, &n, 1);
    if (ok && (details & WEIR_XFCC_DNS)) ok = put_sans(peer, GEN_DNS, "DNS=", out, cap, &n, 0);
    X509_free(peer);
    return ok ? (int)n : -1;
}
