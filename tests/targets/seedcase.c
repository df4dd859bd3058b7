// The seed's test target: threads call f() in tight loops; f's old body and its replacement
// f_new count their own runs. Commands on stdin, one per line:
//   go      start the threads calling f
//   counts  print "old O new N calls C" (C: calls made so far, summed over threads)
//   stop    stop the threads, then print "old O new N calls C" with exact totals
// argv[1]: threads (default 4); argv[2]: busy-wait iterations between calls (default 0), so that
// a tracer can keep up with every call.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 64

long old_runs, new_runs;
static volatile int go, stop;
static volatile long calls[MAX_THREADS * 8];
static long pause_iterations;

__attribute__((noipa)) long f(long x)
{
    __atomic_fetch_add(&old_runs, 1, __ATOMIC_RELAXED);
    return x + 1;
}

__attribute__((noipa)) long f_new(long x)
{
    __atomic_fetch_add(&new_runs, 1, __ATOMIC_RELAXED);
    return x + 2;
}

static void *worker(void *arg)
{
    long id = (long)arg;
    while (!go)
        ;
    long n = 0;
    while (!stop) {
        f(n);
        calls[id * 8] = ++n;
        for (volatile long i = 0; i < pause_iterations; i++)
            ;
    }
    return NULL;
}

static long total_calls(int threads)
{
    long sum = 0;
    for (int i = 0; i < threads; i++)
        sum += calls[i * 8];
    return sum;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    pause_iterations = argc > 2 ? atol(argv[2]) : 0;
    pthread_t tids[MAX_THREADS];
    for (long i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, worker, (void *)i);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "go", 2) == 0) {
            go = 1;
        } else if (strncmp(line, "stop", 4) == 0) {
            stop = 1;
            go = 1;
            for (int i = 0; i < threads; i++)
                pthread_join(tids[i], NULL);
            printf("old %ld new %ld calls %ld\n", __atomic_load_n(&old_runs, __ATOMIC_RELAXED),
                   __atomic_load_n(&new_runs, __ATOMIC_RELAXED), total_calls(threads));
            fflush(stdout);
        } else if (strncmp(line, "counts", 6) == 0) {
            printf("old %ld new %ld calls %ld\n", __atomic_load_n(&old_runs, __ATOMIC_RELAXED),
                   __atomic_load_n(&new_runs, __ATOMIC_RELAXED), total_calls(threads));
            fflush(stdout);
        }
    }
    return 0;
}
