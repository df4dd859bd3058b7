// A small program built once per patch-site flavour (see TargetBuilder).
// Prints "ready" when it runs, then works until stdin closes.
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile long sink;

__attribute__((noipa)) long leaf_add(long a, long b) { return a + b; }
__attribute__((noipa)) static long helper_mul(long a, long b) { sink += a; return a * b; }
__attribute__((noipa)) long compute(long x) { return leaf_add(helper_mul(x, 3), x); }
__attribute__((noipa)) void work_once(long i) { sink += compute(i); }

int main(void)
{
    printf("ready %d\n", getpid());
    fflush(stdout);
    char buf[64];
    long i = 0;
    while (read(0, buf, sizeof buf) > 0)
        work_once(i++);
    return (int)(sink & 0);
}
