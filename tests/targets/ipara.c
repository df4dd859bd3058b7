#define _GNU_SOURCE
// A caller that keeps values in call-clobbered registers across a call, as gcc's -fipa-ra lets the
// callers of a small leaf do (redis's callers of raxSetData keep r9 and r10 across it). Tracing
// `leaf` must hand every one of them back. Prints "ready PID"; then per line on stdin:
//   run N    2 threads call check() N times each; prints "calls 2N bad B": B calls after which
//            rcx, rdx, rsi, rdi or r8-r11 had changed, or the result was wrong.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// leaf(x) = x + 1, touching only rax: 7 bytes before the ret, relocatable without a site. Built
// with -DSITES it starts with a 5-NOP sled, as -fpatchable-function-entry=5 would give it.
#ifdef SITES
#define SLED "nop\nnop\nnop\nnop\nnop\n"
#define RECORD ".section __patchable_function_entries,\"awo\",@progbits,leaf\n.quad leaf\n.text\n"
#else
#define SLED ""
#define RECORD ""
#endif
__asm__(".text\n.globl leaf\n.type leaf,@function\n.p2align 4\nleaf:\n.cfi_startproc\n" SLED
        "mov %rdi, %rax\nadd $1, %rax\nret\n.cfi_endproc\n.size leaf, .-leaf\n" RECORD);

long count_bad(const long *regs, long x, long result);

// long check(long x): sentinels in rcx, rdx, rsi and r8-r11, x in rdi; calls leaf(x); then
// count_bad(the registers as leaf left them, x, its result).
__asm__(".text\n.globl check\n.type check,@function\ncheck:\n.cfi_startproc\n"
        "push %rbx\n.cfi_adjust_cfa_offset 8\n"
        "mov %rdi, %rbx\n"
        "mov $0x1111, %rcx\nmov $0x2222, %rdx\nmov $0x3333, %rsi\n"
        "mov $0x4444, %r8\nmov $0x5555, %r9\nmov $0x6666, %r10\nmov $0x7777, %r11\n"
        "call leaf\n"
        "push %r11\npush %r10\npush %r9\npush %r8\npush %rdi\npush %rsi\npush %rdx\npush %rcx\n"
        ".cfi_adjust_cfa_offset 64\n"
        "mov %rsp, %rdi\nmov %rbx, %rsi\nmov %rax, %rdx\n"
        "call count_bad\n"
        "add $64, %rsp\n.cfi_adjust_cfa_offset -64\n"
        "pop %rbx\n.cfi_adjust_cfa_offset -8\nret\n.cfi_endproc\n.size check, .-check\n");

long check(long x);

// regs: rcx, rdx, rsi, rdi, r8, r9, r10, r11 as the call left them
long count_bad(const long *regs, long x, long result)
{
    const long want[8] = { 0x1111, 0x2222, 0x3333, x, 0x4444, 0x5555, 0x6666, 0x7777 };
    long bad = result != x + 1;
    for (int i = 0; i < 8; i++)
        bad |= regs[i] != want[i];
    return bad;
}

static long per_thread;

static void *caller(void *arg)
{
    long bad = 0;
    for (long i = 0; i < per_thread; i++)
        bad += check(i);
    *(long *)arg = bad;
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "run ", 4) != 0)
            continue;
        per_thread = atol(line + 4);
        pthread_t t[2];
        long bad[2];
        for (int i = 0; i < 2; i++)
            pthread_create(&t[i], NULL, caller, &bad[i]);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        printf("calls %ld bad %ld\n", 2 * per_thread, bad[0] + bad[1]);
    }
    return 0;
}
