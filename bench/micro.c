// Microbenchmark target: a noinline leaf called N times per thread.
// Commands on stdin: "run N THREADS" → runs THREADS threads calling leaf N times each and prints
// "ns X" (wall-clock nanoseconds per call, per thread). leaf2 is the same body, to redirect to.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile long sink;

__attribute__((noipa)) long leaf(long x) { return x + 1; }
__attribute__((noipa)) long leaf2(long x) { return x + 1; }

static long n_calls;

static void *run(void *arg)
{
    (void)arg;
    long acc = 0;
    for (long i = 0; i < n_calls; i++)
        acc = leaf(acc);
    sink += acc;
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(void)
{
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        int threads = 1;
        if (sscanf(line, "run %ld %d", &n_calls, &threads) < 1)
            continue;
        pthread_t t[64];
        double start = now();
        for (int i = 0; i < threads; i++)
            pthread_create(&t[i], NULL, run, NULL);
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
        printf("ns %.3f\n", (now() - start) / n_calls);
        fflush(stdout);
    }
    return 0;
}
