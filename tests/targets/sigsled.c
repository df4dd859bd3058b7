// A thread calling f() in a loop is interrupted by SIGUSR1 until the handler finds the saved PC at
// byte 1 of f's 5-NOP sled; there the handler parks (as a GC's stop-the-world handler parks
// threads) until the main thread reads a line. Then it returns to that saved PC: if the sled was
// converted meanwhile and the PC was not moved, the thread resumes inside a 5-byte instruction.
// Prints "ready PID OFFSET F" (F: f's address, hex), then after the line "calls N" (calls made after the release), "done".
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
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
    if (!parked && pc == (unsigned long)&f + 1) {
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
    struct sigaction sa = {0};
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    for (long i = 0; i < 5000000 && !parked; i++) {
        pthread_kill(t, SIGUSR1);
        for (volatile int spin = 0; spin < 200; spin++) {
        }
    }
    if (!parked) {
        printf("never parked\n");
        return 2;
    }
    printf("ready %d %lu %lx\n", getpid(), parked_at - (unsigned long)&f, (unsigned long)&f);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) {
        return 3;
    }
    long before = calls;
    release = 1;
    struct timespec ts = {0, 100 * 1000000};
    nanosleep(&ts, NULL);
    printf("calls %ld\n", calls - before);
    stop = 1;
    pthread_join(t, NULL);
    printf("done\n");
    fflush(stdout);
    return 0;
}
