// Certificates, keys and CA bundles from memory (secrets that arrive over SDS, not as files):
// the same checks OpenSSL's file loaders make, reading a PEM buffer instead.
#include "weir_tls.h"
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/err.h>

/* Keys are never encrypted here: without this, OpenSSL would ask for a passphrase on the
 * terminal (and block the thread that loads a configuration). */
static int no_password(char *buf, int size, int rwflag, void *u) { (void)buf; (void)size; (void)rwflag; (void)u; return 0; }

void weir_ctx_no_password(SSL_CTX *ctx) { SSL_CTX_set_default_passwd_cb(ctx, no_password); }

void weir_ctx_no_renegotiation(SSL_CTX *ctx) { SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION); }

/* The end of a PEM bundle reads as "no start line"; anything else is a real error. */
static void clear_end_of_bundle(void) {
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) ERR_clear_error();
}

int weir_ctx_use_pem_chain(SSL_CTX *ctx, const char *pem, long length) {
    BIO *bio = BIO_new_mem_buf(pem, (int)length);
    if (!bio) return 0;
    int ok = 0;
    X509 *leaf = PEM_read_bio_X509_AUX(bio, NULL, no_password, NULL);
    if (leaf && SSL_CTX_use_certificate(ctx, leaf) == 1) {
        ok = 1;
        SSL_CTX_clear_chain_certs(ctx);
        X509 *ca;
        while ((ca = PEM_read_bio_X509(bio, NULL, no_password, NULL)) != NULL) {
            if (!SSL_CTX_add0_chain_cert(ctx, ca)) { X509_free(ca); ok = 0; break; }
        }
        if (ok) {
            unsigned long e = ERR_peek_last_error();
            if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) ok = 0;  /* a corrupt intermediate */
            else ERR_clear_error();
        }
    }
    X509_free(leaf);
    BIO_free(bio);
    return ok;
}

int weir_ctx_use_pem_key(SSL_CTX *ctx, const char *pem, long length) {
    BIO *bio = BIO_new_mem_buf(pem, (int)length);
    if (!bio) return 0;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
    int ok = key && SSL_CTX_use_PrivateKey(ctx, key) == 1;
    EVP_PKEY_free(key);
    BIO_free(bio);
    return ok;
}

int weir_ctx_trust_pem(SSL_CTX *ctx, const char *pem, long length, int advertise) {
    BIO *bio = BIO_new_mem_buf(pem, (int)length);
    if (!bio) return 0;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    STACK_OF(X509_NAME) *names = advertise ? sk_X509_NAME_new_null() : NULL;
    int count = 0;
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, no_password, NULL)) != NULL) {
        if (X509_STORE_add_cert(store, x) == 1) count++;
        if (names) { X509_NAME *n = X509_NAME_dup(X509_get_subject_name(x)); if (n) sk_X509_NAME_push(names, n); }
        X509_free(x);
    }
    clear_end_of_bundle();
    if (names) { if (count > 0) SSL_CTX_set_client_CA_list(ctx, names); else sk_X509_NAME_pop_free(names, X509_NAME_free); }
    BIO_free(bio);
    return count;
}
