namespace Hotwire.Interop;

/// <summary>The kernel's <c>struct user_regs_struct</c> (x86-64), as PTRACE_GETREGS fills it.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct user_regs_struct
{
    public ulong r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs;
}

internal static partial class Ptrace
{
    public const int PTRACE_CONT = 7;
    public const int PTRACE_SINGLESTEP = 9;
    public const int PTRACE_GETREGS = 12;
    public const int PTRACE_SETREGS = 13;
    public const int PTRACE_DETACH = 17;
    public const int PTRACE_SEIZE = 0x4206;
    public const int PTRACE_INTERRUPT = 0x4207;
    public const int PTRACE_GETSIGMASK = 0x420a;

    public const int PTRACE_O_TRACEEXEC = 0x10;
    public const int PTRACE_EVENT_EXEC = 4;
    public const int PTRACE_EVENT_STOP = 128;

    public const int __WALL = 0x40000000;
    public const int WNOHANG = 1;

    public const int SIGTRAP = 5;
    public const int SIGKILL = 9;
    public const int SIGSTOP = 19;
    public const int SIGCONT = 18;

    [LibraryImport("libc", SetLastError = true)]
    public static partial long ptrace(long request, int pid, nint addr, nint data);

    [LibraryImport("libc", SetLastError = true)]
    public static unsafe partial int waitpid(int pid, int* status, int options);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int kill(int pid, int sig);

    public static bool WIFSTOPPED(int status) => (status & 0xff) == 0x7f;

    public static bool WIFEXITED(int status) => (status & 0x7f) == 0;

    public static bool WIFSIGNALED(int status) => ((status & 0x7f) + 1) >> 1 > 0 && !WIFSTOPPED(status);

    public static int WSTOPSIG(int status) => (status >> 8) & 0xff;

    public static int WEXITSTATUS(int status) => (status >> 8) & 0xff;

    public static int WTERMSIG(int status) => status & 0x7f;

    public static int EventOf(int status) => status >> 16;
}
