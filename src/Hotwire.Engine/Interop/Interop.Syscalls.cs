namespace Hotwire.Interop;

/// <summary>Linux x86-64 syscall numbers and constants used by Hotwire and its agent.</summary>
public static class SyscallNumbers
{
    public const int read = 0;
    public const int write = 1;
    public const int open = 2;
    public const int close = 3;
    public const int poll = 7;
    public const int mmap = 9;
    public const int mprotect = 10;
    public const int pwrite64 = 18;
    public const int madvise = 28;
    public const int munmap = 11;
    public const int rt_sigaction = 13;
    public const int rt_sigprocmask = 14;
    public const int rt_sigreturn = 15;
    public const int sched_yield = 24;
    public const int nanosleep = 35;
    public const int getpid = 39;
    public const int clone = 56;
    public const int exit = 60;
    public const int ftruncate = 77;
    public const int prctl = 157;
    public const int gettid = 186;
    public const int futex = 202;
    public const int tgkill = 234;
    public const int memfd_create = 319;
    public const int membarrier = 324;
    public const int pidfd_open = 434;
}

internal static partial class Sys
{
    public const int PROT_NONE = 0;
    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int PROT_EXEC = 4;
    public const int MAP_SHARED = 1;
    public const int MAP_PRIVATE = 2;
    public const int MAP_FIXED = 0x10;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_NORESERVE = 0x4000;
    public const int MAP_FIXED_NOREPLACE = 0x100000;
    public const int MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE = 32;
    public const int MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE = 64;
    public const ulong CLONE_VM = 0x100, CLONE_FS = 0x200, CLONE_FILES = 0x400, CLONE_SIGHAND = 0x800, CLONE_THREAD = 0x10000, CLONE_SYSVSEM = 0x40000;
    /// <summary>Auxiliary vector entries (/proc/PID/auxv): the dynamic linker's base, the program's entry point.</summary>
    public const ulong AT_BASE = 7, AT_ENTRY = 9;
    public const int FUTEX_WAIT = 0;
    public const int FUTEX_WAKE = 1;
    public const int MFD_CLOEXEC = 1;

    [LibraryImport("libc", SetLastError = true)]
    public static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int mprotect(nint addr, nuint length, int prot);

    public const int MADV_REMOVE = 9;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int madvise(nint addr, nuint length, int advice);

    [LibraryImport("libc")]
    public static unsafe partial int clock_gettime(int clock, long* ts);

    [LibraryImport("libc", SetLastError = true)]
    public static partial long syscall(long number, nint a1, nint a2, nint a3, nint a4, nint a5, nint a6);

    public static unsafe long FutexWake(uint* address, int count)
        => syscall(SyscallNumbers.futex, (nint)address, FUTEX_WAKE, count, 0, 0, 0);

    public static unsafe long FutexWait(uint* address, uint expected, long timeoutNs)
    {
        long* ts = stackalloc long[2];
        ts[0] = timeoutNs / 1_000_000_000;
        ts[1] = timeoutNs % 1_000_000_000;
        return syscall(SyscallNumbers.futex, (nint)address, FUTEX_WAIT, (nint)expected, (nint)ts, 0, 0);
    }

    public static int PidfdOpen(int pid) => (int)syscall(SyscallNumbers.pidfd_open, pid, 0, 0, 0, 0, 0);
}
