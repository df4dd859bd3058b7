namespace Hotwire;

/// <summary>
/// An anticipated failure whose message is meant for the user: one line that says what is wrong
/// and what to do. The CLI prints it without a stack trace.
/// </summary>
public class HotwireException : Exception
{
    public HotwireException(string message) : base(message) { }

    public HotwireException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A system call failed; carries errno, the call and the pid it was aimed at.</summary>
public sealed class SyscallException : HotwireException
{
    public SyscallException(string call, int errno, int pid, string message)
        : base(message)
    {
        Call = call;
        Errno = errno;
        Pid = pid;
    }

    public string Call { get; }

    public int Errno { get; }

    public int Pid { get; }

    /// <summary>ESRCH: the process or thread is gone — a normal event, not a crash.</summary>
    public bool ProcessGone => Errno == Interop.Libc.ESRCH;
}
