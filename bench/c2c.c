/* c2c: how long one cache line takes to go from CPU 0 to CPU 1 and back, every interval.
 *
 * The benches' rates here have two modes, spells of seconds two to three times slower,
 * for testpmd's vhost as for the daemon (bench/README.md). This measures the machine
 * alone: two threads, pinned to CPUs 0 and 1, pass a counter back and forth; each line
 * printed is the median round trip over the interval (see measure()). With a duty below
 * 1 it measures for that fraction of each second and sleeps the rest, so it can run
 * beside a bench: bench.py and wire.py run it so, and print its figure beside each
 * second's rate.
 *
 *   cc -O2 -pthread -o /tmp/c2c bench/c2c.c
 *   /tmp/c2c SECONDS [DUTY]     # e.g. /tmp/c2c 40 (alone), /tmp/c2c 45 0.05 (beside a bench)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(64) _Atomic long ball; /* odd: CPU 1's turn; even: CPU 0's */
static _Atomic int done;

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *returner(void *arg)
{
    (void)arg;
    pin(1);
    while (!atomic_load_explicit(&done, memory_order_relaxed)) {
        long v = atomic_load_explicit(&ball, memory_order_acquire);
        if (v & 1)
            atomic_store_explicit(&ball, v + 1, memory_order_release);
    }
    return NULL;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Round trips for ``span`` seconds, in batches of 256: the median batch's mean, in
 * nanoseconds. The median, not the mean: beside a bench, a thread of the probe that the
 * scheduler puts off for a time slice stalls one batch by milliseconds, which says
 * nothing about the cache line. */
static double measure(double span)
{
    enum { MAX_BATCHES = 1 << 16 };
    static double batch[MAX_BATCHES];
    pthread_t thread;
    atomic_store(&done, 0);
    pthread_create(&thread, NULL, returner, NULL);
    int n = 0;
    double start = now(), t = start;
    while (t - start < span && n < MAX_BATCHES) {
        double t0 = t;
        for (int i = 0; i < 256; i++) {
            long v = atomic_load_explicit(&ball, memory_order_relaxed) + 1;
            atomic_store_explicit(&ball, v, memory_order_release);
            while (atomic_load_explicit(&ball, memory_order_acquire) == v)
                ;
        }
        t = now();
        batch[n++] = (t - t0) * 1e9 / 256;
    }
    atomic_store(&done, 1);
    pthread_join(thread, NULL);
    qsort(batch, (size_t)n, sizeof batch[0], by_value);
    return batch[n / 2];
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 30, duty = argc > 2 ? atof(argv[2]) : 1;
    if (seconds <= 0 || duty <= 0 || duty > 1) {
        fprintf(stderr, "usage: c2c SECONDS [DUTY in (0, 1]]\n");
        return 2;
    }
    pin(0);
    double start = now(), span = duty < 1 ? duty : 0.5;
    while (now() - start < seconds) {
        double at = now() - start, ns = measure(span);
        printf("%.1f s: %.1f ns a round trip\n", at, ns);
        fflush(stdout);
        if (duty < 1) {
            struct timespec rest = {0, (long)((1 - duty) * 1e9)};
            nanosleep(&rest, NULL);
        }
    }
    return 0;
}
