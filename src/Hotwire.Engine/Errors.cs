using Hotwire.Interop;

namespace Hotwire;

/// <summary>errno becomes an exception here and nowhere else.</summary>
internal static class Errors
{
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
