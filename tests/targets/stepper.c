// A ptrace helper that parks one thread at an instruction boundary: stepper TID ADDR...
// Seizes TID, stops it, single-steps it until its PC is one of the ADDRs (hex), prints "parked PC"
// and keeps it stopped until a line arrives on stdin; then detaches (the thread runs on) and exits.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: stepper TID ADDR...\n");
        return 2;
    }
    pid_t tid = atoi(argv[1]);
    if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0 || ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) {
        perror("ptrace");
        return 1;
    }
    int status;
    if (waitpid(tid, &status, __WALL) != tid) {
        perror("waitpid");
        return 1;
    }
    for (long steps = 0; steps < 50000000; steps++) {
        struct user_regs_struct regs;
        if (ptrace(PTRACE_GETREGS, tid, 0, &regs) != 0) {
            perror("getregs");
            return 1;
        }
        for (int i = 2; i < argc; i++) {
            if (regs.rip == strtoull(argv[i], NULL, 16)) {
                printf("parked %llx\n", regs.rip);
                fflush(stdout);
                char line[16];
                if (!fgets(line, sizeof line, stdin)) {
                }
                ptrace(PTRACE_DETACH, tid, 0, 0);
                return 0;
            }
        }
        if (ptrace(PTRACE_SINGLESTEP, tid, 0, 0) != 0 || waitpid(tid, &status, __WALL) != tid) {
            perror("singlestep");
            return 1;
        }
        if (WIFSTOPPED(status) && WSTOPSIG(status) != SIGTRAP) {
            // a signal for the thread: deliver it on the next step
            ptrace(PTRACE_SINGLESTEP, tid, 0, WSTOPSIG(status));
            waitpid(tid, &status, __WALL);
        }
    }
    fprintf(stderr, "never reached\n");
    ptrace(PTRACE_DETACH, tid, 0, 0);
    return 1;
}
