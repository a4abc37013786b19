// Session ticket key rotation (see include/weir_tls.h). OpenSSL's own ticket keys are made once
// per context and never change; these rotate.
#include "weir_tls.h"
#include <openssl/rand.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    time_t created;
    int valid;
} ticket_key;

struct weir_ticket_keys {
    pthread_mutex_t lock;
    long rotate_seconds;
    long rotations;
    ticket_key current;
    ticket_key previous;
};

static int ex_index = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;
static void make_index(void) { ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL); }

static int fresh(ticket_key *k) {
    if (RAND_bytes(k->name, sizeof k->name) != 1 || RAND_bytes(k->aes, sizeof k->aes) != 1 ||
        RAND_bytes(k->hmac, sizeof k->hmac) != 1) return 0;
    k->created = time(NULL);
    k->valid = 1;
    return 1;
}

weir_ticket_keys *weir_ticket_keys_new(long rotate_seconds) {
    weir_ticket_keys *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    pthread_mutex_init(&k->lock, NULL);
    k->rotate_seconds = rotate_seconds > 0 ? rotate_seconds : 43200;
    if (!fresh(&k->current)) { free(k); return NULL; }
    return k;
}

void weir_ticket_keys_free(weir_ticket_keys *k) {
    if (!k) return;
    OPENSSL_cleanse(&k->current, sizeof k->current);
    OPENSSL_cleanse(&k->previous, sizeof k->previous);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

long weir_ticket_keys_rotations(weir_ticket_keys *k) {
    pthread_mutex_lock(&k->lock);
    long n = k->rotations;
    pthread_mutex_unlock(&k->lock);
    return n;
}

static int set_mac(EVP_MAC_CTX *mac, const unsigned char *key) {
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)key, 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(mac, params);
}

static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac, int enc) {
    weir_ticket_keys *k = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index);
    if (!k) return -1;
    ticket_key use;
    int renew = 0;
    pthread_mutex_lock(&k->lock);
    time_t now = time(NULL);
    if (now - k->current.created >= k->rotate_seconds) {
        k->previous = k->current;
        if (!fresh(&k->current)) { pthread_mutex_unlock(&k->lock); return -1; }
        k->rotations++;
    }
    if (enc) {
        use = k->current;
    } else if (memcmp(name, k->current.name, 16) == 0) {
        use = k->current;
    } else if (k->previous.valid && memcmp(name, k->previous.name, 16) == 0 && now - k->previous.created < 2 * k->rotate_seconds) {
        use = k->previous;
        renew = 1;
    } else {
        pthread_mutex_unlock(&k->lock);
        return 0; /* unknown or expired key: a full handshake */
    }
    pthread_mutex_unlock(&k->lock);
    int ok;
    if (enc) {
        memcpy(name, use.name, 16);
        ok = RAND_bytes(iv, EVP_MAX_IV_LENGTH) == 1 &&
             EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, use.aes, iv) == 1 && set_mac(mac, use.hmac) == 1;
    } else {
        ok = EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, use.aes, iv) == 1 && set_mac(mac, use.hmac) == 1;
    }
    OPENSSL_cleanse(&use, sizeof use);
    if (!ok) return -1;
    return renew ? 2 : 1;
}

int weir_ticket_keys_install(SSL_CTX *ctx, weir_ticket_keys *keys) {
    pthread_once(&ex_once, make_index);
    if (ex_index < 0 || !SSL_CTX_set_ex_data(ctx, ex_index, keys)) return 0;
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) == 1;
}
