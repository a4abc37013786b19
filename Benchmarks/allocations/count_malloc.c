/* LD_PRELOAD allocation counter for Benchmarks/allocations/run.sh: counts malloc, calloc,
 * realloc and posix_memalign calls and prints the total when the process exits. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_long calls;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_memalign)(void **, size_t, size_t);
/* dlsym may call calloc before real_calloc is known: serve that from a static buffer. */
static char early[4096];
static size_t early_used;

static void init(void) {
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
}

void *malloc(size_t n) { if (!real_malloc) init(); atomic_fetch_add(&calls, 1); return real_malloc(n); }
void *realloc(void *p, size_t n) { if (!real_realloc) init(); atomic_fetch_add(&calls, 1); return real_realloc(p, n); }
int posix_memalign(void **p, size_t a, size_t n) { if (!real_memalign) init(); atomic_fetch_add(&calls, 1); return real_memalign(p, a, n); }
void *calloc(size_t a, size_t b) {
    if (!real_calloc) {
        if (early_used + a * b > sizeof early) return NULL;
        void *p = early + early_used; early_used += (a * b + 15) & ~15UL; memset(p, 0, a * b); return p;
    }
    atomic_fetch_add(&calls, 1);
    return real_calloc(a, b);
}
void free(void *p) {
    static void (*real_free)(void *);
    if (p >= (void *)early && p < (void *)(early + sizeof early)) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("COUNT_MALLOC_OUT");
    FILE *f = path ? fopen(path, "w") : stderr;
    if (f) { fprintf(f, "allocations %ld\n", atomic_load(&calls)); if (path) fclose(f); }
}
