/* OpenSSL for Weir's TLS (used from the TLS issue on; the shim exists so the build proves the
 * dependency early). */
#include <openssl/ssl.h>
#include <openssl/err.h>
