// Forks a child that keeps calling f(), on commands read from stdin:
//   fork   fork a child that calls f() every millisecond for 1.5 s, then exits 0; print "forked PID"
//   wait   wait for it; print "child exited N" or "child killed by signal N"
// The parent itself calls f() every millisecond too.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void f(void)
{
    __asm__ volatile("");
}

static void nap(void)
{
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
}

static void *caller(void *arg)
{
    (void)arg;
    for (;;) {
        f();
        nap();
    }
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, NULL, caller, NULL);
    printf("ready %d\n", getpid());
    char line[64];
    pid_t child = 0;
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "fork", 4) == 0) {
            child = fork();
            if (child == 0) {
                for (int i = 0; i < 1500; i++) {
                    f();
                    nap();
                }
                _exit(0);
            }
            printf("forked %d\n", child);
        } else if (strncmp(line, "wait", 4) == 0) {
            int status;
            waitpid(child, &status, 0);
            if (WIFEXITED(status))
                printf("child exited %d\n", WEXITSTATUS(status));
            else
                printf("child killed by signal %d\n", WTERMSIG(status));
        }
    }
    return 0;
}
