/* Live-heap histogram by allocation size, for finding what a proxy holds per connection.
 *
 *   cc -O2 -shared -fPIC -o mallochist.so bench/tools/mallochist.c
 *   LD_PRELOAD=$PWD/mallochist.so ambit run --manifest node.yaml &
 *   kill -USR2 <pid>        # writes /tmp/mallochist.<pid>: "<usable size> <live count>" lines
 *
 * Take one snapshot before and one while N connections are held; the difference per size,
 * divided by N, is what each connection costs and in which size classes (BENCHMARKS.md
 * shows how it was used). Counts are by malloc_usable_size, so a class covers 16 bytes.
 * Not for production: every malloc and free pays an atomic add.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define CLASSES 4097 /* usable size / 16; the last class collects everything larger */
static long counts[CLASSES];
static long large_bytes;

static inline void account(void *p, int sign) {
    if (!p) {
        return;
    }
    size_t usable = malloc_usable_size(p);
    size_t class = usable / 16;
    if (class >= CLASSES - 1) {
        __atomic_add_fetch(&large_bytes, sign * (long)usable, __ATOMIC_RELAXED);
        class = CLASSES - 1;
    }
    __atomic_add_fetch(&counts[class], sign, __ATOMIC_RELAXED);
}

void *malloc(size_t n) {
    void *p = __libc_malloc(n);
    account(p, 1);
    return p;
}

void free(void *p) {
    account(p, -1);
    __libc_free(p);
}

void *calloc(size_t count, size_t size) {
    void *p = __libc_calloc(count, size);
    account(p, 1);
    return p;
}

void *realloc(void *old, size_t n) {
    account(old, -1);
    void *p = __libc_realloc(old, n);
    if (!p && n) {
        account(old, 1); /* failed: the old block is still live */
    } else {
        account(p, 1);
    }
    return p;
}

void *memalign(size_t alignment, size_t n) {
    void *p = __libc_memalign(alignment, n);
    account(p, 1);
    return p;
}

void *aligned_alloc(size_t alignment, size_t n) { return memalign(alignment, n); }

int posix_memalign(void **result, size_t alignment, size_t n) {
    void *p = __libc_memalign(alignment, n);
    if (!p) {
        return 12; /* ENOMEM */
    }
    account(p, 1);
    *result = p;
    return 0;
}

static void dump(int signal_number) {
    (void)signal_number;
    char path[64];
    snprintf(path, sizeof path, "/tmp/mallochist.%d", getpid());
    FILE *f = fopen(path, "w");
    if (!f) {
        return;
    }
    for (int i = 0; i < CLASSES; i++) {
        if (counts[i]) {
            fprintf(f, "%d %ld\n", i * 16, counts[i]);
        }
    }
    fprintf(f, "large_bytes %ld\n", large_bytes);
    fclose(f);
}

__attribute__((constructor)) static void install(void) { signal(SIGUSR2, dump); }
