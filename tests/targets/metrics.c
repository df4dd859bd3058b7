#define _GNU_SOURCE
// A process to watch with `hotwire top` and the metrics exporters. It prints "ready PID", then
// obeys lines on stdin:
//   calls N      main calls work(i) for i = 0..N-1 (work calls leaf), then prints "done N"
//   naps N US    main calls nap(US) N times (each sleeps US microseconds), then prints "done N"
//   spin         a thread "spinner" calls hot() (about 20 us of work) and cold() (a few ns) in a
//                loop until "stop"; prints "spinning"
//   stop         ends the spinner; prints "stopped"
// It exits at the end of its input.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile long sink;
static volatile int spinning;

__attribute__((noipa)) long leaf(long x) { sink += x; return x; }
__attribute__((noipa)) long work(long x) { return leaf(x) + 1; }
__attribute__((noipa)) void nap(long us)
{
    struct timespec t = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&t, NULL);
}
__attribute__((noipa)) long cold(long x) { sink -= x; return x; }
__attribute__((noipa)) long hot(long x)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        for (int i = 0; i < 100; i++)
            sink += i ^ x;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < 20000);
    return x;
}

static void *spinner(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "spinner");
    for (long i = 0; spinning; i++) {
        hot(i);
        cold(i);
    }
    return NULL;
}

int main(void)
{
    char line[128];
    pthread_t thread;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    while (fgets(line, sizeof line, stdin)) {
        long n = 0, us = 0;
        if (sscanf(line, "calls %ld", &n) == 1) {
            for (long i = 0; i < n; i++)
                work(i);
            printf("done %ld\n", n);
        } else if (sscanf(line, "naps %ld %ld", &n, &us) == 2) {
            for (long i = 0; i < n; i++)
                nap(us);
            printf("done %ld\n", n);
        } else if (strncmp(line, "spin", 4) == 0 && !spinning) {
            spinning = 1;
            pthread_create(&thread, NULL, spinner, NULL);
            printf("spinning\n");
        } else if (strncmp(line, "stop", 4) == 0 && spinning) {
            spinning = 0;
            pthread_join(thread, NULL);
            printf("stopped\n");
        }
    }
    if (spinning) {
        spinning = 0;
        pthread_join(thread, NULL);
    }
    return 0;
}
