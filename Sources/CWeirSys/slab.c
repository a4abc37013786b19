/* Recycled blocks by size class for one thread (a shard): a block freed goes on its class's free
 * list and the next allocation of that class takes it, so a steady load allocates nothing from
 * the heap. Each block has a 16-byte header saying its class (or, for a large block, that it
 * came from malloc). A class keeps at most SLAB_KEEP_BYTES of free blocks; more go back to the
 * heap, so a peak of connections does not pin its memory for good. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "weir_sys.h"

#define SLAB_CLASSES 11
#define SLAB_KEEP_BYTES (8u << 20)
#define SLAB_LARGE 0xFFFF

/* Powers of two, and nghttp2's frame buffer (9 + 1 + 16384 bytes, a little over 16 KiB) its own
 * class rather than half a 32 KiB block wasted. */
static const size_t classes[SLAB_CLASSES] = {64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 16448, 32768};

typedef struct block { struct block *next; } block;
typedef struct { uint32_t cls; uint32_t pad; uint64_t size; } header;
typedef struct { block *free[SLAB_CLASSES]; uint32_t count[SLAB_CLASSES]; } slab;

static size_t class_bytes(int c) { return classes[c]; }

static int class_of(size_t n) {
    for (int c = 0; c < SLAB_CLASSES; c++) if (n <= class_bytes(c)) return c;
    return -1;
}

void *weir_slab_new(void) { return calloc(1, sizeof(slab)); }

void *weir_slab_malloc(size_t size, void *p) {
    slab *s = p;
    int c = class_of(size);
    header *h;
    if (c < 0) {
        if (size > SIZE_MAX - sizeof(header)) return NULL;
        h = malloc(sizeof(header) + size);
        if (!h) return NULL;
        h->cls = SLAB_LARGE;
        h->size = size;
        return h + 1;
    }
    if (s->free[c]) {
        block *b = s->free[c];
        s->free[c] = b->next;
        s->count[c]--;
        h = (header *)b - 1;
    } else {
        h = malloc(sizeof(header) + class_bytes(c));
        if (!h) return NULL;
        h->cls = (uint32_t)c;
    }
    h->size = size;
    return h + 1;
}

void weir_slab_free(void *ptr, void *p) {
    if (!ptr) return;
    slab *s = p;
    header *h = (header *)ptr - 1;
    if (h->cls == SLAB_LARGE || (size_t)s->count[h->cls] * class_bytes((int)h->cls) >= SLAB_KEEP_BYTES) { free(h); return; }
    block *b = ptr;
    b->next = s->free[h->cls];
    s->free[h->cls] = b;
    s->count[h->cls]++;
}

void *weir_slab_calloc(size_t count, size_t size, void *p) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *r = weir_slab_malloc(count * size, p);
    if (r) memset(r, 0, count * size);
    return r;
}

void *weir_slab_realloc(void *ptr, size_t size, void *p) {
    if (!ptr) return weir_slab_malloc(size, p);
    if (size == 0) { weir_slab_free(ptr, p); return NULL; }
    header *h = (header *)ptr - 1;
    size_t capacity = h->cls == SLAB_LARGE ? h->size : class_bytes((int)h->cls);
    if (size <= capacity && h->cls != SLAB_LARGE) { h->size = size; return ptr; }
    void *r = weir_slab_malloc(size, p);
    if (!r) return NULL;
    memcpy(r, ptr, h->size < size ? h->size : size);
    weir_slab_free(ptr, p);
    return r;
}
