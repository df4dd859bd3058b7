namespace Hotwire.Procfs;

/// <summary><c>/proc/PID/task/TID/syscall</c>: where a thread blocked in a system call is.</summary>
public static class ProcSyscall
{
    /// <summary>(sp, pc, and the context switches so far) of a thread blocked in a system call, from /proc/PID/task/TID/syscall; null if it runs.</summary>
    public static (ulong Sp, ulong Pc, string Switches)? BlockedAt(string task)
    {
        try
        {
            string[] f = File.ReadAllText(Path.Combine(task, "syscall")).Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (f.Length != 9 || f[0] == "-1")
            {
                return null;   // "running", or blocked outside a system call
            }
            string switches = ProcStatus.Field(Path.Combine(task, "status"), "voluntary_ctxt_switches") ?? "";
            return (Convert.ToUInt64(f[7], 16), Convert.ToUInt64(f[8], 16), switches);
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
