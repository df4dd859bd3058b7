#define _GNU_SOURCE
// Call trees known by construction, for the function_graph tracer's tests. Each mode prints a
// result line the tests compare with an untraced run.
//   graph fib N        fib(N) recursively
//   graph deep N       rec(N): a chain of N nested calls
//   graph longjmp N    N times: outer() sets a jump buffer, calls jump1 -> jump2 -> jump3, which longjmps
//                      back to outer; outer then calls after(i)
//   graph signal       work() raises SIGUSR1; on_signal() runs nested under it and calls leaf()
//   graph sleep        sleeper() sleeps 10 ms inside one call
//   graph exit         a thread calls t1 -> t2 -> pthread_exit; main joins it, then calls leaf()
//   graph fork         forker() forks inside a traced frame; both processes return through it
//                      (the child calls leaf(2), the parent leaf(3)); the parent waits
//   graph hold N [MS]  prints "ready", then N times nap() (MS, default 200, ms asleep inside it); a tracer can
//                      come and go while nap is on the stack; prints "held T", exits at stdin's end
//   graph tail         main calls tail(i) for i = 0..2, which ends in a tail call (jmp) to leaf()
//   graph sigstress N  a 20 µs interval timer whose handler calls in_signal() interrupts main's N
//                      calls of leaf(i): most signals land inside a tracer's own code
//   graph tree         two threads each call a(i) -> b -> c (i = 0..2); main then calls leaf(9)
//   graph lossy N      N times: north(i) -> north2 -> leaf, then south(i) -> south2 -> leaf (two
//                      callers at each depth, so a reader that guesses callers after lost events
//                      invents paths such as north -> south2)
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

volatile long sink;

__attribute__((noipa)) long leaf(long x) { sink += x; return x * 2; }
__attribute__((noipa)) long fib(long n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
__attribute__((noipa)) long rec(long n) { return n == 0 ? leaf(0) : rec(n - 1) + 1; }

static jmp_buf jump;
__attribute__((noipa)) void jump3(long x) { sink += x; longjmp(jump, 1); }
__attribute__((noipa)) void jump2(long x) { jump3(x + 1); sink++; }
__attribute__((noipa)) void jump1(long x) { jump2(x + 1); sink++; }
__attribute__((noipa)) long after(long x) { return leaf(x); }
__attribute__((noipa)) long outer(long i)
{
    if (setjmp(jump) == 0) {
        jump1(i);
        return -1;
    }
    return after(i);
}

__attribute__((noipa)) void on_signal(int sig) { leaf(sig); }
__attribute__((noipa)) long work(void) { raise(SIGUSR1); return leaf(1); }

volatile long signals;
__attribute__((noipa)) void in_signal(int sig) { signals += sig; }
static void on_timer(int sig) { in_signal(sig); }

__attribute__((noipa)) long sleeper(void) { usleep(10000); return 0; }

__attribute__((noipa)) void t2(long x) { sink += x; pthread_exit(NULL); }
__attribute__((noipa)) void t1(long x) { t2(x + 1); sink++; }
__attribute__((noipa)) void *exiter(void *arg) { t1((long)arg); return NULL; }

__attribute__((noipa)) long forker(void)
{
    pid_t child = fork();
    if (child == 0)
        return leaf(2);
    int status;
    waitpid(child, &status, 0);
    return leaf(3) + WEXITSTATUS(status);
}

static long nap_ms = 200;
__attribute__((noipa)) long nap(long i) { usleep(nap_ms * 1000); return leaf(i); }

// Built with sibling calls off, except here: tail() reaches leaf() by a jmp.
__attribute__((noipa, optimize("optimize-sibling-calls"))) long tail(long x) { return leaf(x + 1); }

__attribute__((noipa)) long c(long x) { return leaf(x); }
__attribute__((noipa)) long b(long x) { return c(x + 1); }
__attribute__((noipa)) long a(long x) { return b(x + 1); }
__attribute__((noipa)) long north2(long x) { return leaf(x); }
__attribute__((noipa)) long north(long x) { return north2(x + 1); }
__attribute__((noipa)) long south2(long x) { return leaf(x) + leaf(x + 1); }
__attribute__((noipa)) long south(long x) { return south2(x + 2); }

__attribute__((noipa)) void *worker(void *arg)
{
    for (long i = 0; i < 3; i++)
        a((long)arg * 10 + i);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "tree";
    long n = argc > 2 ? atol(argv[2]) : 0;
    if (strcmp(mode, "fib") == 0) {
        printf("fib(%ld) = %ld\n", n, fib(n));
    } else if (strcmp(mode, "deep") == 0) {
        printf("rec(%ld) = %ld\n", n, rec(n));
    } else if (strcmp(mode, "longjmp") == 0) {
        long total = 0;
        for (long i = 0; i < n; i++)
            total += outer(i);
        printf("longjmp total %ld\n", total);
    } else if (strcmp(mode, "signal") == 0) {
        signal(SIGUSR1, on_signal);
        printf("work = %ld\n", work());
    } else if (strcmp(mode, "sleep") == 0) {
        printf("slept %ld\n", sleeper());
    } else if (strcmp(mode, "exit") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, exiter, (void *)5);
        pthread_join(t, NULL);
        printf("joined %ld\n", leaf(4));
    } else if (strcmp(mode, "sigstress") == 0) {
        struct sigaction sa = { .sa_handler = on_timer, .sa_flags = SA_RESTART };
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = { { 0, 20 }, { 0, 20 } };
        setitimer(ITIMER_REAL, &it, NULL);
        long total = 0;
        for (long i = 0; i < n; i++)
            total += leaf(i);
        struct itimerval off = { { 0, 0 }, { 0, 0 } };
        setitimer(ITIMER_REAL, &off, NULL);
        printf("sigstress %ld\n", total);
    } else if (strcmp(mode, "tail") == 0) {
        long total = 0;
        for (long i = 0; i < 3; i++)
            total += tail(i);
        printf("tail %ld\n", total);
    } else if (strcmp(mode, "hold") == 0) {
        if (argc > 3)
            nap_ms = atol(argv[3]);
        printf("ready %d\n", getpid());
        fflush(stdout);
        long total = 0;
        for (long i = 0; i < n; i++)
            total += nap(i);
        printf("held %ld\n", total);
        fflush(stdout);
        while (getchar() != EOF)
            ;
    } else if (strcmp(mode, "lossy") == 0) {
        long total = 0;
        for (long i = 0; i < n; i++)
            total += north(i) + south(i);
        printf("lossy %ld\n", total);
    } else if (strcmp(mode, "fork") == 0) {
        long r = forker();
        if (r == 4) // the child: leaf(2) * 2
            return 0;
        printf("forked %ld\n", r);
    } else {
        pthread_t t[2];
        for (long k = 0; k < 2; k++)
            pthread_create(&t[k], NULL, worker, (void *)(k + 1));
        for (int k = 0; k < 2; k++)
            pthread_join(t[k], NULL);
        printf("tree %ld\n", leaf(9));
    }
    fflush(stdout);
    return 0;
}
