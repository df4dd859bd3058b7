// Differential execution of relocated entries: hand-written functions, one per relocation rule, and a
// region near the program's code where the test puts a function's detour. Non-PIE: the test reads
// addresses and bytes from the file.
// Prints "ready PID REGION" (a page-aligned RWX region of 64 KiB within ±2 GiB of the code). Commands:
//   load HEX               copy bytes to the region's start
//   run NAME ENTRY A B     call NAME(A, B), then the region at offset ENTRY as the same function with
//                          (A, B); prints "R1 R2 RA1 RA2 C1 C2": results, the return address `seen`
//                          recorded, and `counter` after each (counter is reset to 100 before each call)
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

long counter = 100;
long table[4] = {11, 22, 33, 44};
void *seen;

// Records where it was called from (its return address), and returns something of its argument.
__attribute__((noinline)) long note(long x)
{
    seen = __builtin_return_address(0);
    return x * 7 + 1;
}

#define ASM_FUNCTION(name, body) \
    __asm__(".text\n.globl " #name "\n.type " #name ",@function\n.p2align 4\n" #name ":\n.cfi_startproc\n" body ".cfi_endproc\n.size " #name ", .-" #name "\n");

// A RIP-relative load alone covers 5 bytes.
ASM_FUNCTION(rip_load, "mov counter(%rip), %rax\nadd %rdi, %rax\nret\n")
// A RIP-relative store, then an lea.
ASM_FUNCTION(rip_store, "mov %rdi, counter(%rip)\nlea 1(%rdi), %rax\nret\n")
// A RIP-relative lea of an array.
ASM_FUNCTION(rip_lea, "lea table(%rip), %rax\nand $3, %rdi\nmov (%rax,%rdi,8), %rax\nret\n")
// A RIP-relative compare with an immediate.
ASM_FUNCTION(rip_cmp, "cmpq $150, counter(%rip)\nsetg %al\nmovzbl %al, %eax\nadd %rdi, %rax\nret\n")
// test (3) + jle rel8 (2): a short conditional branch as the last relocated instruction.
ASM_FUNCTION(jcc_short, "test %rdi, %rdi\njle 1f\nlea 10(%rdi), %rax\nret\n1: mov $-1, %rax\nret\n")
// cmp (3) + jg rel32 (6): a near conditional branch.
ASM_FUNCTION(jcc_near, "cmp %rsi, %rdi\njg 2f\n.skip 200, 0x90\nmov %rsi, %rax\nret\n2: mov %rdi, %rax\nret\n")
// mov (3) + jmp rel8 (2): an unconditional branch last.
ASM_FUNCTION(jmp_last, "mov %rdi, %rax\njmp 1f\nud2\n1: add $3, %rax\nret\n")
// push (1) + call rel32 (5): a direct call last; note() sees the original return address.
ASM_FUNCTION(call_last, "push %rbx\n.cfi_adjust_cfa_offset 8\ncall note\npop %rbx\n.cfi_adjust_cfa_offset -8\nadd $2, %rax\nret\n")
// push, push, push r12 (4) + call *%rsi (2): an indirect call last.
ASM_FUNCTION(icall_last, "push %rbx\npush %rbp\npush %r12\ncall *%rsi\npop %r12\npop %rbp\npop %rbx\nadd $5, %rax\nret\n")
// endbr64 stays; push (1) + mov (3) + lea (4) are relocated.
ASM_FUNCTION(endbr_frame, "endbr64\npush %rbp\nmov %rsp, %rbp\nlea (%rdi,%rdi,2), %rax\npop %rbp\nret\n")

long rip_load(long, long), rip_store(long, long), rip_lea(long, long), rip_cmp(long, long), jcc_short(long, long),
    jcc_near(long, long), jmp_last(long, long), call_last(long, long), icall_last(long, long), endbr_frame(long, long);

static const struct { const char *name; long (*f)(long, long); } functions[] = {
    {"rip_load", rip_load}, {"rip_store", rip_store}, {"rip_lea", rip_lea}, {"rip_cmp", rip_cmp},
    {"jcc_short", jcc_short}, {"jcc_near", jcc_near}, {"jmp_last", jmp_last}, {"call_last", call_last},
    {"icall_last", icall_last}, {"endbr_frame", endbr_frame},
};

int main(void)
{
    // A region below the program's code (non-PIE: 0x400000), within reach of rel32.
    unsigned char *region = MAP_FAILED;
    for (uintptr_t at = 0x300000; at >= 0x100000 && region == MAP_FAILED; at -= 0x10000)
        region = mmap((void *)at, 0x10000, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (region == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    printf("ready %d %lx\n", getpid(), (unsigned long)region);
    fflush(stdout);
    char line[8192];
    while (fgets(line, sizeof line, stdin)) {
        char name[64];
        long entry, a, b;
        if (strncmp(line, "load ", 5) == 0) {
            size_t n = 0;
            for (const char *p = line + 5; p[0] && p[1] && p[0] != '\n'; p += 2) {
                unsigned v;
                sscanf(p, "%2x", &v);
                region[n++] = (unsigned char)v;
            }
            __builtin___clear_cache((char *)region, (char *)region + n);
            printf("loaded %zu\n", n);
        } else if (sscanf(line, "run %63s %ld %ld %ld", name, &entry, &a, &b) == 4) {
            long (*f)(long, long) = 0;
            for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++)
                if (strcmp(functions[i].name, name) == 0)
                    f = functions[i].f;
            if (!f) {
                printf("unknown %s\n", name);
            } else {
                long (*d)(long, long) = (long (*)(long, long))(region + entry);
                seen = 0;
                counter = 100;
                long r1 = f(a, b);
                void *ra1 = seen;
                long c1 = counter;
                seen = 0;
                counter = 100;
                long r2 = d(a, b);
                void *ra2 = seen;
                long c2 = counter;
                printf("%ld %ld %p %p %ld %ld\n", r1, r2, ra1, ra2, c1, c2);
            }
        } else {
            printf("bad command\n");
        }
        fflush(stdout);
    }
    return 0;
}
