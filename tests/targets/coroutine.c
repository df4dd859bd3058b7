// Coroutines with makecontext/swapcontext (as uftrace's t014): one whose stack is an array in
// main's own frame, one whose stack is on the heap. Traced frames are suspended on one stack while
// frames on the other run and return. Prints the same lines traced or not.
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

static ucontext_t uc_main, uc_co;
static long total;

__attribute__((noipa)) long leaf(long x)
{
    return x * 2;
}

__attribute__((noipa)) void yield_back(void)
{
    swapcontext(&uc_co, &uc_main);
}

__attribute__((noipa)) void coroutine(void)
{
    for (long i = 0; i < 3; i++) {
        total += leaf(i);
        yield_back();
    }
}

__attribute__((noipa)) void resume(void)
{
    swapcontext(&uc_main, &uc_co);
}

__attribute__((noipa)) long run(char *stack, size_t size)
{
    total = 0;
    getcontext(&uc_co);
    uc_co.uc_stack.ss_sp = stack;
    uc_co.uc_stack.ss_size = size;
    uc_co.uc_link = &uc_main;
    makecontext(&uc_co, coroutine, 0);
    for (long i = 0; i < 4; i++) {
        resume();
        total += leaf(100 + i);
    }
    return total;
}

int main(void)
{
    char stack[64 * 1024];
    printf("caller's stack: %ld\n", run(stack, sizeof stack));
    char *heap = malloc(64 * 1024);
    printf("heap stack: %ld\n", run(heap, 64 * 1024));
    free(heap);
    return 0;
}
