namespace Hotwire;

/// <summary>errno becomes an exception here and nowhere else: Hotwire's own calls' and those run in the target.</summary>
internal static class Errors
{
    /// <summary>True for a raw system call result that is an error (−4095..−1).</summary>
    public static bool IsError(long result) => result is < 0 and >= -4095;

    /// <summary>
    /// A system call run inside the target (by the agent or the bootstrap block) failed with
    /// <paramref name="result"/> = −errno: "WHAT failed in pid N: ERROR[; AFTERWARDS]".
    /// </summary>
    public static HotwireException InTarget(string what, long result, int pid, string? afterwards = null)
        => new($"{what} failed in pid {pid}: {Libc.StrError((int)-result)}{(afterwards is null ? "" : "; " + afterwards)}");

    /// <summary><paramref name="result"/>, or <see cref="InTarget"/>'s exception when it is an error.</summary>
    public static long CheckInTarget(long result, string what, int pid, string? afterwards = null)
        => IsError(result) ? throw InTarget(what, result, pid, afterwards) : result;

    public static SyscallException FromErrno(string call, int errno, int pid)
    {
        string message = errno switch
        {
            Libc.ESRCH or Libc.ENOENT => $"no process with pid {pid} (it does not exist or has exited)",
            Libc.EPERM or Libc.EACCES =>
                $"permission denied for pid {pid} ({call}): run as the process's owner with ptrace rights, "
                + "or as root / with CAP_SYS_PTRACE; check kernel.yama.ptrace_scope",
            _ => $"{call} failed for pid {pid}: {Libc.StrError(errno)}",
        };
        return new SyscallException(call, errno, pid, message);
    }
}
