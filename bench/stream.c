// STREAM-style memory bandwidth: triad a[i] = b[i] + s*c[i] (counted as 3 x 8 bytes per element,
// the STREAM convention, i.e. without write-allocate traffic) and a read-only sum (8 bytes per
// element, closer to what a decode step does: it streams weights). Best of NTIMES.
// Build: cc -O3 -march=native -fopenmp stream.c -o stream ; run: OMP_NUM_THREADS=2 ./stream [N]
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 40L * 1000 * 1000;  // 3 x 320 MB, >> 32 MB L3
    int ntimes = argc > 2 ? atoi(argv[2]) : 10;
    double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    if (!a || !b || !c) return 1;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) { a[i] = 0.0; b[i] = 1.0; c[i] = 2.0; }
    double best_triad = 1e30, best_read = 1e30;
    uint64_t sink = 0;
    for (int k = 0; k < ntimes; k++) {
        double s = 3.0 + k, t = now();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) a[i] = b[i] + s * c[i];
        t = now() - t;
        if (t < best_triad) best_triad = t;
        // integer sum over the same bytes: associative, so the compiler vectorizes it
        const uint64_t *u = (const uint64_t *)a;
        uint64_t sum = 0;
        t = now();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (long i = 0; i < n; i++) sum += u[i];
        t = now() - t;
        sink += sum;
        if (t < best_read) best_read = t;
    }
    printf("{\"threads\": %d, \"n\": %ld, \"triad_gb_s\": %.3f, \"read_gb_s\": %.3f, \"sink\": %llu}\n",
           omp_get_max_threads(), n, 3.0 * 8 * n / best_triad / 1e9, 8.0 * n / best_read / 1e9, (unsigned long long)(sink & 0xff));
    return 0;
}
