// Threads calling reloc_f(), a function without a patch site whose entry relocates as three
// instructions (pause, xor, lea: boundaries at +2 and +4), checking every result (a wrong one aborts).
// The pause makes interrupts land right after it, at +2 (after push or mov they never did here).
// One thread (PARKED) is the one a test parks at a boundary: by a ptrace helper (stepper.c), or,
// after "signal", in its own SIGUSR1 handler when the saved PC is at the boundary +2, until "release".
// Prints "ready PID PARKED ENTRY" (ENTRY: reloc_f's address, hex). Commands: "calls" prints the
// calls completed so far; "signal" parks PARKED in its handler ("parked PC" once there);
// "release" lets it go; "stop" ends the loops and prints "ok".
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

__asm__(".text\n.globl reloc_f\n.type reloc_f,@function\n.p2align 4\nreloc_f:\n.cfi_startproc\n"
        "pause\nxor %eax, %eax\nlea 1(%rdi), %rax\nret\n"
        ".cfi_endproc\n.size reloc_f, .-reloc_f\n");
long reloc_f(long x);

static volatile long calls;
static volatile int stop, release, parked, want_park;
static volatile pid_t parked_tid;

static void handler(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)si;
    ucontext_t *uc = ctx;
    unsigned long pc = uc->uc_mcontext.gregs[REG_RIP], f = (unsigned long)&reloc_f;
    if (want_park && !parked && pc == f + 2) {
        parked = 1;
        printf("parked %lx\n", pc);
        fflush(stdout);
        while (!release) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

static void *worker(void *arg)
{
    long id = (long)arg;
    if (id == 0)
        parked_tid = (pid_t)syscall(SYS_gettid);
    for (long i = 0; !stop; i++) {
        if (reloc_f(i) != i + 1) {
            fprintf(stderr, "reloc_f(%ld) returned a wrong value\n", i);
            abort();
        }
        __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(void)
{
    struct sigaction sa = {0};
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t t[3];
    for (long i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    while (!parked_tid)
        usleep(1000);
    printf("ready %d %d %lx\n", getpid(), parked_tid, (unsigned long)&reloc_f);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "calls", 5) == 0) {
            printf("%ld\n", calls);
        } else if (strncmp(line, "signal", 6) == 0) {
            want_park = 1;
            for (long i = 0; i < 50000000 && !parked; i++) {
                pthread_kill(t[0], SIGUSR1);
                for (volatile int spin = 0; spin < 100; spin++) {
                }
            }
            if (!parked) {
                printf("never parked\n");
            }
        } else if (strncmp(line, "release", 7) == 0) {
            release = 1;
            printf("released\n");
        } else if (strncmp(line, "stop", 4) == 0) {
            stop = 1;
            for (int i = 0; i < 3; i++)
                pthread_join(t[i], NULL);
            printf("ok\n");
        }
        fflush(stdout);
    }
    return 0;
}
