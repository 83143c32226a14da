/*
 * The cost of the MPMC ring's steps (src/penny/native/mpmc_ring.h), in C
 * with no Python: one thread pushing and popping (uncontended: the cost of
 * the atomics themselves), then one producer and one consumer thread
 * (the cache line traffic of a pair).  benchmarks/ring.sh builds it against
 * the working tree's header and, given a git revision, against that
 * revision's too, and runs them alternately.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mpmc_ring.h"

#define CAP 65536
#define N 20000000L

static double
now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static char *ring;

static void *
producer(void *arg)
{
    long n = *(long *)arg;
    for (long i = 1; i <= n; i++)
        while (!mq_push(ring, CAP - 1, (uint64_t)i))
            ;
    return NULL;
}

int
main(void)
{
    ring = aligned_alloc(64, Q_SLOTS + 16 * (size_t)CAP);
    mq_init(ring, CAP);
    double best = 1e9;
    uint64_t sum = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        for (long i = 1; i <= N; i++) {
            mq_push(ring, CAP - 1, (uint64_t)i);
            sum += (uint64_t)mq_pop(ring, CAP - 1);
        }
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    if (sum != 5 * (uint64_t)N * (N + 1) / 2)
        return 1;
    printf("one thread, push + pop:          %6.2f ns per item (best of 5)\n", best / N * 1e9);
    best = 1e9;
    long n = N / 4;
    for (int r = 0; r < 5; r++) {
        pthread_t p;
        double t0 = now();
        pthread_create(&p, NULL, producer, &n);
        sum = 0;
        for (long got = 0; got < n;) {
            int64_t x = mq_pop(ring, CAP - 1);
            if (x > 0) {
                sum += (uint64_t)x;
                got++;
            }
        }
        pthread_join(p, NULL);
        double dt = now() - t0;
        best = dt < best ? dt : best;
        if (sum != (uint64_t)n * (n + 1) / 2)
            return 1;
    }
    printf("producer thread -> consumer:     %6.2f ns per item (best of 5)\n", best / n * 1e9);
    return 0;
}
