namespace Hotwire.Injection;

/// <summary>
/// One thread held with PTRACE_SEIZE. Must be used on the <see cref="PtraceThread"/> only.
/// Stops: PTRACE_INTERRUPT (a group-stop-like event stop), or a signal-delivery stop that happened
/// to come first; signals seen while we hold the thread are remembered and delivered on detach.
/// </summary>
public sealed class Tracee
{
    private readonly List<int> _pendingSignals = [];
    private bool _attached;

    private Tracee(int pid, int tid)
    {
        Pid = pid;
        Tid = tid;
    }

    public int Pid { get; }

    public int Tid { get; }

    public static Tracee Seize(int pid, int tid, int options = 0)
    {
        if (Ptrace.ptrace(Ptrace.PTRACE_SEIZE, tid, 0, options) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw errno switch
            {
                Libc.EPERM when TracerOf(pid) is int tracer and > 0 =>
                    new HotwireException($"pid {pid} is already traced by {DescribeTracer(tracer)}; detach the debugger or tracer first"),
                Libc.EPERM or Libc.EACCES => new HotwireException(
                    $"no permission to ptrace pid {pid}: run as root or with CAP_SYS_PTRACE, or as the same user with kernel.yama.ptrace_scope = 0 (sysctl kernel.yama.ptrace_scope)"),
                Libc.ESRCH => new HotwireException($"no process with pid {pid} (it does not exist or has exited)"),
                _ => Errors.FromErrno("ptrace(PTRACE_SEIZE)", errno, pid),
            };
        }
        return new Tracee(pid, tid) { _attached = true };
    }

    /// <summary>
    /// Runs <paramref name="work"/> with thread <paramref name="tid"/> seized and stopped, then lets
    /// it go (Detach rewinds an interrupted call). False if the thread could not be seized or
    /// exited meanwhile. Call on the ptrace thread.
    /// </summary>
    public static bool WhileStopped(int pid, int tid, Action<Tracee> work)
    {
        Tracee t;
        try
        {
            t = Seize(pid, tid);
        }
        catch (HotwireException)
        {
            return false; // exited meanwhile
        }
        try
        {
            t.Interrupt();
            work(t);
            return true;
        }
        catch (TargetExitedException)
        {
            return false;
        }
        finally
        {
            t.Detach();
        }
    }

    /// <summary>Stops the thread (PTRACE_INTERRUPT) and waits until it is in a ptrace stop.</summary>
    public void Interrupt()
    {
        Check(Ptrace.ptrace(Ptrace.PTRACE_INTERRUPT, Tid, 0, 0), "ptrace(PTRACE_INTERRUPT)");
        int status = WaitStop();
        if (Ptrace.EventOf(status) == 0)
        {
            // A signal-delivery stop came first: we hold the thread all the same. The signal is
            // suppressed while we work and delivered on detach.
            _pendingSignals.Add(Ptrace.WSTOPSIG(status));
        }
        RestartCallInterruptedByUs();
    }

    // Calls that fail with EINTR, not ERESTART*, when a stop kicks them out of their sleep, though no
    // handler ran (signal(7), "Interruption of system calls and library functions by stop signals"):
    // epoll waits, System V semaphores, signal waits, AIO event waits, and socket calls under a
    // SO_RCVTIMEO/SO_SNDTIMEO timeout (read and write too on such a socket). Re-entering the call is
    // what the kernel's own restart would do; a timeout starts again from its full value (as with
    // SA_RESTART). Not connect: re-entered, it would fail with EALREADY, so its EINTR stays.
    private static readonly long[] s_eintrOnStop =
    [
        232 /* epoll_wait */, 281 /* epoll_pwait */, 441 /* epoll_pwait2 */,
        65 /* semop */, 220 /* semtimedop */,
        128 /* rt_sigtimedwait */,
        208 /* io_getevents */, 333 /* io_pgetevents */,
        0 /* read */, 1 /* write */, 19 /* readv */, 20 /* writev */,
        43 /* accept */, 288 /* accept4 */, 44 /* sendto */, 45 /* recvfrom */, 46 /* sendmsg */, 47 /* recvmsg */,
        299 /* recvmmsg */, 307 /* sendmmsg */,
    ];

    /// <summary>
    /// The calls above fail with EINTR when PTRACE_INTERRUPT wakes them (strace and gdb cause the
    /// same). When nothing but our stop interrupted the call — no signal stop came first and no
    /// unblocked signal is pending for the thread — set it up to re-enter the call on resume, as
    /// the kernel does for restartable calls.
    /// </summary>
    private void RestartCallInterruptedByUs()
    {
        const long EINTR = 4;
        if (_pendingSignals.Count > 0 || TestSwitches.NoSyscallRewind)
        {
            return;
        }
        user_regs_struct regs = GetRegs();
        if ((long)regs.rax == -EINTR && Array.IndexOf(s_eintrOnStop, (long)regs.orig_rax) >= 0 && !UnblockedSignalPending())
        {
            regs.rax = regs.orig_rax;
            regs.rip -= 2;
            SetRegs(regs);
        }
    }

    // A signal that will run a handler when the thread resumes: then EINTR is the call's true result.
    private bool UnblockedSignalPending()
    {
        string status = $"/proc/{Pid}/task/{Tid}/status";
        ulong Mask(string field) => ulong.TryParse(Procfs.ProcStatus.Field(status, field), System.Globalization.NumberStyles.HexNumber, null, out ulong v) ? v : 0;
        return ((Mask("SigPnd") | Mask("ShdPnd")) & ~Mask("SigBlk")) != 0;
    }

    /// <summary>
    /// Without blocking: true if the thread is in a signal-delivery stop (the signal is then held and
    /// delivered on <see cref="Detach"/>). For tests that hold a thread between a trap and its handler.
    /// </summary>
    public unsafe bool PollSignalStop(out int signal)
    {
        int status;
        signal = 0;
        if (Ptrace.waitpid(Tid, &status, Ptrace.__WALL | Ptrace.WNOHANG) != Tid || !Ptrace.WIFSTOPPED(status))
        {
            return false;
        }
        signal = Ptrace.WSTOPSIG(status);
        if (Ptrace.EventOf(status) == 0)
        {
            _pendingSignals.Add(signal);
            return true;
        }
        Ptrace.ptrace(Ptrace.PTRACE_CONT, Tid, 0, 0);
        return false;
    }

    public bool HasPendingSignals => _pendingSignals.Count > 0;

    /// <summary>After PTRACE_O_TRACEEXEC and SIGCONT: runs the thread until its exec stop; other stops pass.</summary>
    public void WaitForExec()
    {
        while (true)
        {
            int status = WaitStop();
            int ev = Ptrace.EventOf(status);
            if (ev == Ptrace.PTRACE_EVENT_EXEC)
            {
                return;
            }
            int sig = Ptrace.WSTOPSIG(status);
            int deliver = ev == 0 && sig is not (Ptrace.SIGSTOP or Ptrace.SIGCONT or Ptrace.SIGTRAP) ? sig : 0;
            Check(Ptrace.ptrace(Ptrace.PTRACE_CONT, Tid, 0, deliver), "ptrace(PTRACE_CONT)");
        }
    }

    /// <summary>Lets a thread held at an exec stop run to its next exec (signals are delivered on the way).</summary>
    public void ContinueUntilExec()
    {
        Check(Ptrace.ptrace(Ptrace.PTRACE_CONT, Tid, 0, 0), "ptrace(PTRACE_CONT)");
        WaitForExec();
    }

    public bool HasPendingSignal(int signal) => _pendingSignals.Contains(signal);

    public unsafe user_regs_struct GetRegs()
    {
        user_regs_struct regs;
        Check(Ptrace.ptrace(Ptrace.PTRACE_GETREGS, Tid, 0, (nint)(&regs)), "ptrace(PTRACE_GETREGS)");
        return regs;
    }

    public unsafe void SetRegs(user_regs_struct regs)
        => Check(Ptrace.ptrace(Ptrace.PTRACE_SETREGS, Tid, 0, (nint)(&regs)), "ptrace(PTRACE_SETREGS)");

    /// <summary>Executes one instruction and waits for the step's SIGTRAP; other signals are kept for later.</summary>
    public void SingleStep()
    {
        while (true)
        {
            Check(Ptrace.ptrace(Ptrace.PTRACE_SINGLESTEP, Tid, 0, 0), "ptrace(PTRACE_SINGLESTEP)");
            int status = WaitStop();
            int sig = Ptrace.WSTOPSIG(status);
            if (sig == Ptrace.SIGTRAP && Ptrace.EventOf(status) == 0)
            {
                return;
            }
            if (Ptrace.EventOf(status) == 0)
            {
                _pendingSignals.Add(sig); // delivered before the step ran: step again, deliver it on detach
            }
        }
    }

    /// <summary>Resumes the thread and lets it go, delivering any signal that arrived while we held it.</summary>
    /// <summary>Lets the thread run until it traps (an int3 we placed); other signals are delivered on the way.</summary>
    public void ContinueUntilTrap()
    {
        int deliver = 0;
        while (true)
        {
            Check(Ptrace.ptrace(Ptrace.PTRACE_CONT, Tid, 0, deliver), "ptrace(PTRACE_CONT)");
            int status = WaitStop();
            int sig = Ptrace.WSTOPSIG(status);
            if (sig == Ptrace.SIGTRAP && Ptrace.EventOf(status) == 0)
            {
                return;
            }
            deliver = Ptrace.EventOf(status) == 0 ? sig : 0;
        }
    }

    public void Detach()
    {
        if (!_attached)
        {
            return;
        }
        _attached = false;
        int sig = _pendingSignals.Count > 0 ? _pendingSignals[0] : 0;
        if (Ptrace.ptrace(Ptrace.PTRACE_DETACH, Tid, 0, sig) < 0 && Marshal.GetLastPInvokeError() != Libc.ESRCH)
        {
            throw Errors.FromErrno("ptrace(PTRACE_DETACH)", Marshal.GetLastPInvokeError(), Pid);
        }
        // More than one signal held: the rest go to this same thread (tgkill). A process-wide kill
        // could hand a SIGTRAP to another thread, where our handler sees no site and passes it on.
        for (int i = 1; i < _pendingSignals.Count; i++)
        {
            Sys.syscall(SyscallNumbers.tgkill, Pid, Tid, _pendingSignals[i], 0, 0, 0);
        }
    }

    private unsafe int WaitStop()
    {
        while (true)
        {
            int status;
            int r = Ptrace.waitpid(Tid, &status, Ptrace.__WALL);
            if (r < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Libc.EINTR)
                {
                    continue;
                }
                throw Errors.FromErrno("waitpid", errno, Pid);
            }
            if (Ptrace.WIFSTOPPED(status))
            {
                return status;
            }
            _attached = false;
            throw new TargetExitedException(Pid, Ptrace.WIFEXITED(status)
                ? $"pid {Pid} exited with status {Ptrace.WEXITSTATUS(status)} while Hotwire was attaching"
                : $"pid {Pid} was killed by signal {Ptrace.WTERMSIG(status)} while Hotwire was attaching");
        }
    }

    private void Check(long result, string call)
    {
        if (result < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Libc.ESRCH)
            {
                throw new TargetExitedException(Pid, $"pid {Pid} exited while Hotwire was attaching");
            }
            throw Errors.FromErrno(call, errno, Pid);
        }
    }

    public static int? TracerOf(int pid) => Procfs.ProcStatus.IntField($"/proc/{pid}/status", "TracerPid");

    /// <summary>The process (thread group) a thread id belongs to; TracerPid names the tracing thread.</summary>
    public static int ThreadGroupOf(int tid) => Procfs.ProcStatus.IntField($"/proc/{tid}/status", "Tgid") ?? tid;

    public static string DescribeTracer(int tracerTid)
    {
        int pid = ThreadGroupOf(tracerTid);
        return $"pid {pid} ({ProcessName(pid)})";
    }

    public static string ProcessName(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim();
        }
        catch (IOException)
        {
            return "?";
        }
    }
}

/// <summary>The target exited while Hotwire worked on it.</summary>
public sealed class TargetExitedException(int pid, string message) : HotwireException(message)
{
    public int Pid { get; } = pid;
}
