// Functions without patch sites, for discovering and classifying entries in unmodified binaries:
// ordinary gcc functions, a function gcc splits into a hot part and a .cold fragment, and hand-written
// entries that must be refused (a loop back into the first 5 bytes, a call before them end, a
// syscall inside them) or relocated (rip-relative, a final call). Built -O2 without any patch-site flag.
// "run" prints a line of results so that the functions are live code.
#include <stdio.h>
#include <stdlib.h>

long counter;

__attribute__((noinline)) long add3(long a, long b, long c) { return a + b + c; }

__attribute__((noinline)) long bump(long by) { counter += by; return counter; }

__attribute__((noinline)) long helper(long x) { return x ^ (x >> 3); }

__attribute__((noinline, cold, noreturn)) void die(long value)
{
    fprintf(stderr, "die: %ld\n", value);
    abort();
}

// With -freorder-blocks-and-partition each gets a .cold fragment (its call of die). twice_or_die has no
// frame, so its fragment starts as a function would (CFA = rsp + 8): only the jump to it tells them apart.
__attribute__((noinline)) long twice_or_die(long x)
{
    if (x < 0)
        die(x);
    return x * 2;
}

__attribute__((noinline)) long checked(long x)
{
    long r = twice_or_die(x);
    if (r == 7) {
        printf("unlucky %ld\n", x);
        die(r);
    }
    return r + twice_or_die(r);
}

// Hand-written entries (with unwind information, as a compiler would emit it).
#define ASM_FUNCTION(name, body) \
    __asm__(".text\n.globl " #name "\n.type " #name ",@function\n" #name ":\n.cfi_startproc\n" body ".cfi_endproc\n.size " #name ", .-" #name "\n");

// xor (2 bytes) + add (3 bytes) are the first 5; the loop's back-edge lands on the add.
ASM_FUNCTION(loop_into, "xor %eax, %eax\n1: add $1, %eax\ncmp %edi, %eax\njl 1b\nret\n")
// push (1) + an indirect call (2) + pop (1) + add (3): the call is not the last of the first 5 bytes.
ASM_FUNCTION(call_early, "push %rbx\n.cfi_adjust_cfa_offset 8\ncall *%rdi\npop %rbx\n.cfi_adjust_cfa_offset -8\nadd $1, %eax\nret\n")
// xor (2) + mov (2) + syscall (2): a syscall inside the first 5 bytes (getpid).
ASM_FUNCTION(sys_early, "xor %eax, %eax\nmov $39, %al\nsyscall\nret\n")
// A rip-relative load (7 bytes) alone covers the first 5.
ASM_FUNCTION(rip_first, "mov counter(%rip), %rax\nadd %rdi, %rax\nret\n")
// push (1) + a direct call (5) as the last relocated instruction.
ASM_FUNCTION(call_last, "push %rbx\n.cfi_adjust_cfa_offset 8\ncall helper\npop %rbx\n.cfi_adjust_cfa_offset -8\nret\n")
// Returns before 5 bytes.
ASM_FUNCTION(ret_early, "mov %edi, %eax\nret\nnop\nnop\nnop\nnop\n")

long loop_into(long n);
long call_early(long (*f)(void));
long sys_early(void);
long rip_first(long x);
long call_last(long x);
long ret_early(long x);

static long seven(void) { return 7; }

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 5;
    printf("%ld %ld %ld %ld %ld %ld %ld %ld %d\n", add3(n, 2, 3), bump(n), checked(n), loop_into(n), call_early(seven),
           rip_first(n), call_last(n), ret_early(n), sys_early() > 0);
    return 0;
}
