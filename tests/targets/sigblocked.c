// Two threads that block every signal (SIGTRAP included), as a sigwait design's workers do, call
// f() in a tight loop; "counts" on stdin prints "f N", the calls so far.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile long calls;

__attribute__((noipa)) void f(void)
{
    __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
}

static void *worker(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;)
        f();
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    printf("ready %d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "counts", 6) == 0)
            printf("f %ld\n", calls);
    }
    return 0;
}
