// Microbenchmark target: a noinline leaf called N times per thread.
// Commands on stdin: "run N THREADS [PAUSE]" → THREADS (1 or 2) persistent threads each call leaf
// N times, busy-waiting PAUSE iterations between calls (to set a call rate);
// prints "ns X" (wall-clock nanoseconds per call, per thread). The threads live for the whole run,
// so a tracer's per-thread buffers are reused from one run to the next, as in a long-lived service.
// leaf2 has the same body, to redirect to.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile long sink;

__attribute__((noipa)) long leaf(long x) { return x + 1; }
__attribute__((noipa)) long leaf2(long x) { return x + 1; }

static long n_calls, pause_iterations;
static int active;
static pthread_barrier_t start, done;

static void *worker(void *arg)
{
    long id = (long)arg;
    for (;;) {
        pthread_barrier_wait(&start);
        if (id < active) {
            long acc = 0;
            for (long i = 0; i < n_calls; i++) {
                acc = leaf(acc);
                for (volatile long p = 0; p < pause_iterations; p++)
                    ;
            }
            sink += acc;
        }
        pthread_barrier_wait(&done);
    }
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
    pthread_t t[2];
    pthread_barrier_init(&start, NULL, 3);
    pthread_barrier_init(&done, NULL, 3);
    for (long i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        int threads = 1;
        pause_iterations = 0;
        if (sscanf(line, "run %ld %d %ld", &n_calls, &threads, &pause_iterations) < 1)
            continue;
        active = threads < 1 ? 1 : threads > 2 ? 2 : threads;
        double begin = now();
        pthread_barrier_wait(&start);
        pthread_barrier_wait(&done);
        printf("ns %.3f\n", (now() - begin) / n_calls);
        fflush(stdout);
    }
    return 0;
}
