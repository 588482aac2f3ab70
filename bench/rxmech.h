/*
 * bench/rxmech.h: what rxmech.c and rxmech_xdp.c share: clocks, and the latency probe.
 * ``rxmech pace`` sends frames carrying their send time (CLOCK_MONOTONIC, one clock for
 * every namespace) after a marker at Ethernet offset 42 (the UDP payload); a receiver
 * calls ``lat_note`` on each frame it copied out and ``lat_report`` at the end: the
 * median and 99th percentile of send-to-seen, the delay the mechanism adds at that rate.
 */
#ifndef RXMECH_H
#define RXMECH_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define LAT_AT 42
#define LAT_MARK 0x7470616365ULL /* "tpace" */
#define LAT_MAX 200000

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static double lat[LAT_MAX];
static unsigned nlat;

static inline void lat_stamp(unsigned char *eth)
{
    uint64_t mark = LAT_MARK;
    double t = now();
    memcpy(eth + LAT_AT, &mark, 8);
    memcpy(eth + LAT_AT + 8, &t, 8);
}

static void lat_note(const unsigned char *eth, size_t len)
{
    uint64_t mark;
    double t;
    if (len < LAT_AT + 16 || nlat == LAT_MAX)
        return;
    memcpy(&mark, eth + LAT_AT, 8);
    if (mark != LAT_MARK)
        return;
    memcpy(&t, eth + LAT_AT + 8, 8);
    lat[nlat++] = now() - t;
}

static int lat_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void lat_report(void)
{
    if (!nlat)
        return;
    qsort(lat, nlat, sizeof lat[0], lat_cmp);
    printf("   latency over %u paced frames: median %.1f us, p99 %.1f us\n", nlat, lat[nlat / 2] * 1e6,
           lat[(size_t)nlat * 99 / 100] * 1e6);
}
#endif
