// A thread calling f() in a loop is interrupted by SIGUSR1 (after the line "park") until the handler
// finds the saved PC in no loaded object: in Hotwire's code, which is all the loop runs besides f
// and its own code. There the handler parks (as a GC's stop-the-world handler parks threads)
// until the line "release", then returns to that PC: if the code there was replaced meanwhile,
// the thread runs whatever is there now.
// Prints "ready PID", "parked PC" (hex) once parked, then after "release": "calls N" (calls made
// after the release) and "done".
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

__attribute__((noinline)) void f(void)
{
    __asm__ volatile("");
}

static volatile long calls;
static volatile int parked, release, stop;
static volatile unsigned long parked_at;

static void handler(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)si;
    ucontext_t *uc = ctx;
    unsigned long pc = uc->uc_mcontext.gregs[REG_RIP];
    Dl_info info;
    if (!parked && dladdr((void *)pc, &info) == 0) {   // in no loaded object: Hotwire's code
        parked_at = pc;
        parked = 1;
        while (!release) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

static void *worker(void *arg)
{
    (void)arg;
    while (!stop) {
        f();
        calls++;
    }
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa = {0};
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    printf("ready %d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "park", 4) == 0) {
            for (long i = 0; i < 20000000 && !parked; i++) {
                pthread_kill(t, SIGUSR1);
                for (volatile int spin = 0; spin < 2000; spin++) {
                }
            }
            if (parked) {
                printf("parked %lx\n", parked_at);
            } else {
                printf("not parked\n");
            }
        } else if (strncmp(line, "release", 7) == 0) {
            long before = calls;
            release = 1;
            struct timespec ts = {0, 200000000};
            nanosleep(&ts, NULL);
            printf("calls %ld\n", calls - before);
            stop = 1;
            pthread_join(t, NULL);
            printf("done\n");
            return 0;
        }
    }
    return 0;
}
