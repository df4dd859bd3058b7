#define _GNU_SOURCE
// Deterministic call sequences for the tracers' tests.
//   calls tree      two threads "worker-0" and "worker-1" each call a(k*100+i) for i = 0..4, where
//                   a(x) calls b(x+1) and b(y) calls c(y+1); then main calls d(99) and exits.
//   calls burst N   main calls leaf(i) for i = 0..N-1 and exits.
//   calls fork      main calls a(1), forks; the child calls d(2), d(3) and exits; the parent calls
//                   d(4), waits for the child, calls d(5).
//   calls orphan MS main calls a(1), forks and exits; the child outlives it: it calls d(i) for
//                   i = 0, 1, ... every millisecond for MS milliseconds, then exits.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

volatile long sink;

__attribute__((noipa)) long c(long x) { sink += x; return x; }
__attribute__((noipa)) long b(long x) { return c(x + 1); }
__attribute__((noipa)) long a(long x) { return b(x + 1); }
__attribute__((noipa)) long d(long x) { sink += x; return x; }
__attribute__((noipa)) long leaf(long x) { sink += x; return x; }

static pthread_barrier_t named;

__attribute__((noipa)) void *worker_main(void *arg)
{
    long k = (long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%ld", k);
    pthread_setname_np(pthread_self(), name);
    pthread_barrier_wait(&named);
    for (long i = 0; i < 5; i++)
        a(k * 100 + i);
    usleep(200 * 1000); // live long enough for the recorder to read this thread's name
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "burst") == 0) {
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++)
            leaf(i);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "orphan") == 0) {
        long ms = atol(argv[2]);
        a(1);
        if (fork() == 0) {
            usleep(50 * 1000);   // the parent is gone by now
            for (long i = 0; i < ms; i++) {
                d(i);
                usleep(1000);
            }
        }
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "fork") == 0) {
        a(1);
        pid_t child = fork();
        if (child == 0) {
            d(2);
            d(3);
            usleep(100 * 1000);
            return 0;
        }
        d(4);
        waitpid(child, NULL, 0);
        d(5);
        return 0;
    }
    pthread_t t[2];
    pthread_barrier_init(&named, NULL, 3);
    for (long k = 0; k < 2; k++)
        pthread_create(&t[k], NULL, worker_main, (void *)k);
    pthread_barrier_wait(&named);
    for (int k = 0; k < 2; k++)
        pthread_join(t[k], NULL);
    d(99);
    return 0;
}
