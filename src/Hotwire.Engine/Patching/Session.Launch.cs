namespace Hotwire.Patching;

public sealed class LaunchOptions
{
    /// <summary>Redirect the program's stdin from this file (default: inherit).</summary>
    public string? StdinPath { get; init; }

    /// <summary>Redirect the program's stdout to this file (default: inherit).</summary>
    public string? StdoutPath { get; init; }
}

public sealed unsafe partial class Session
{
    /// <summary>
    /// Starts <paramref name="program"/> stopped at exec, before any of its code runs, injects the
    /// agent and makes every site a single instruction (as the kernel's ftrace_init at boot), then
    /// lets it run. Hotwire is its parent: <see cref="WaitForExit"/> reaps it.
    /// </summary>
    /// <param name="beforeRun">work to do while the program is still stopped at exec (register ops,
    /// so that tracing starts with the program's first instruction)</param>
    public static Session Launch(string program, IReadOnlyList<string> args, SessionOptions? options = null, LaunchOptions? launch = null,
        Action<Session>? beforeRun = null)
    {
        string path = ProgramLauncher.ResolveProgram(program, out bool script);
        // The child stops itself, Hotwire seizes it with PTRACE_O_TRACEEXEC and lets it exec.
        int pid = Spawn.Start("/bin/sh", ["sh", "-c", "kill -STOP $$ && exec \"$0\" \"$@\"", path, .. args], launch?.StdinPath, launch?.StdoutPath);
        Tracee tracee = PtraceThread.Shared.Invoke(() => ProgramLauncher.StopAtExec(pid, path));
        Session? session = null;
        try
        {
            // The libraries the program links are traced too, their constructors included: the
            // dynamic linker maps them before it runs any of their code.
            PtraceThread.Shared.Invoke(() => ProgramLauncher.RunUntilLibrariesMapped(pid, tracee));
            ProcessImage image = ProcessImage.Load(pid);
            // With relocated entries any program can be traced from its first instruction.
            bool relocate = options?.RelocateEntries ?? false;
            // A script (start.sh that execs the real program): its interpreter has no sites; follow
            // its execs, held at each, to the first program that has, and start there.
            while (script && !relocate && !image.AllSites.Any())
            {
                try
                {
                    PtraceThread.Shared.Invoke(() =>
                    {
                        tracee.ContinueUntilExec();
                        ProgramLauncher.RunUntilLibrariesMapped(pid, tracee);
                    });
                }
                catch (TargetExitedException)
                {
                    throw new HotwireException($"{program} ended, and no program it executed had patch sites: {SiteDiscovery.HowToAddSites}");
                }
                image = ProcessImage.Load(pid);
            }
            if (relocate && (ProgramLauncher.Aux(pid, Sys.AT_BASE) ?? 0) == 0)   // no dynamic linker
            {
                throw new HotwireException($"{program} is statically linked: at launch its start-up code runs before thread-local storage exists, "
                    + "which --relocate's tracing needs; start it, then trace it with --pid");
            }
            if (!image.AllSites.Any() && !relocate)
            {
                throw new HotwireException($"{program} has no patch sites, nor has any library it links: {SiteDiscovery.HowToAddSites}");
            }
            var execMappings = ProcMaps.Read(pid).Where(m => m.IsExecutable).ToList();
            session = new Session(pid, image, launched: true, ProcessMemory.Open(pid, writable: true), execMappings) { Notice = options?.Notice };
            session.BootstrapStopped(tracee, options ?? new SessionOptions());
            // Convert every sled and __fentry__ call now, while no thread can be inside one.
            session.Apply(session.Sites.Where(s => !s.Converted).ToList());
            beforeRun?.Invoke(session);
            // From here on, dlopen is followed (an int3 on the linker's rendezvous).
            session.StartFollowingLibraries(tracee);
            if (session._whenLoaded.Count > 0)
            {
                session.RunToEntry(tracee);
            }
            session._running = true;
        }
        catch
        {
            Ptrace.kill(pid, Ptrace.SIGKILL);
            PtraceThread.Shared.Invoke(tracee.Detach);
            ProgramLauncher.Reap(pid);
            session?._memory.Dispose();
            throw;
        }
        PtraceThread.Shared.Invoke(tracee.Detach);
        return session;
    }

    /// <summary>
    /// Lets the dynamic linker load and relocate the libraries, stopping at the program's entry
    /// point (an int3 there, suppressed under ptrace), then runs what waited for the libraries.
    /// </summary>
    private void RunToEntry(Tracee tracee)
    {
        ulong entry = ProgramLauncher.AuxEntry(Pid);
        Span<byte> original = stackalloc byte[1];
        if (!_memory.TryRead(entry, original))
        {
            throw new HotwireException($"cannot read the entry point of pid {Pid}");
        }
        byte saved = original[0];
        _memory.Write(entry, [0xcc]);
        PtraceThread.Shared.Invoke(() =>
        {
            tracee.ContinueUntilTrap();
            user_regs_struct regs = tracee.GetRegs();
            regs.rip = entry;
            tracee.SetRegs(regs);
        });
        _memory.Write(entry, [saved]);
        ProcessImage loaded = ProcessImage.Load(Pid);
        _running = true;
        foreach (Action<ProcessImage> action in _whenLoaded)
        {
            action(loaded);
        }
        _whenLoaded.Clear();
    }

    /// <summary>Waits until a launched program exits; returns its exit code, or 128 + signal.</summary>
    public int WaitForExit(CancellationToken cancel = default) => WaitForExit(cancel, Timeout.InfiniteTimeSpan) ?? -1;

    /// <summary>Waits up to <paramref name="timeout"/> for a launched program to exit; null if it still runs.</summary>
    public int? WaitForExit(CancellationToken cancel, TimeSpan timeout)
    {
        long deadline = timeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (!cancel.IsCancellationRequested)
        {
            int status;
            int r = Ptrace.waitpid(Pid, &status, Ptrace.WNOHANG);
            if (r == Pid)
            {
                _exited = true;
                return Ptrace.WIFEXITED(status) ? Ptrace.WEXITSTATUS(status) : 128 + Ptrace.WTERMSIG(status);
            }
            if (r < 0 && Marshal.GetLastPInvokeError() != Libc.EINTR)
            {
                return -1;
            }
            if (Environment.TickCount64 >= deadline)
            {
                return null;
            }
            Thread.Sleep(5);
        }
        return null;
    }

    private bool _exited;
}
