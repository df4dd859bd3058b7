using System.Runtime.InteropServices;
using Hotwire.Injection;
using Hotwire.Interop;
using Hotwire.Memory;
using Hotwire.Procfs;

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
        string path = ResolveProgram(program, out bool script);
        // The child stops itself, Hotwire seizes it with PTRACE_O_TRACEEXEC and lets it exec.
        int pid = Spawn.Start("/bin/sh", ["sh", "-c", "kill -STOP $$ && exec \"$0\" \"$@\"", path, .. args], launch?.StdinPath, launch?.StdoutPath);
        Tracee tracee = PtraceThread.Shared.Invoke(() => StopAtExec(pid, path));
        Session? session = null;
        try
        {
            // The libraries the program links are traced too, their constructors included: the
            // dynamic linker maps them before it runs any of their code.
            PtraceThread.Shared.Invoke(() => RunUntilLibrariesMapped(pid, tracee));
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
                        RunUntilLibrariesMapped(pid, tracee);
                    });
                }
                catch (TargetExitedException)
                {
                    throw new HotwireException($"{program} ended, and no program it executed had patch sites: {SiteDiscovery.HowToAddSites}");
                }
                image = ProcessImage.Load(pid);
            }
            if (relocate && (Aux(pid, Sys.AT_BASE) ?? 0) == 0)   // no dynamic linker
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
            Reap(pid);
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
        ulong entry = AuxEntry(Pid);
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

    private static ulong AuxEntry(int pid) => Aux(pid, Sys.AT_ENTRY) ?? throw new HotwireException($"pid {pid} has no entry point in its auxiliary vector");

    private static ulong? Aux(int pid, ulong type)
    {
        byte[] auxv = File.ReadAllBytes($"/proc/{pid}/auxv");
        for (int i = 0; i + 16 <= auxv.Length; i += 16)
        {
            if (BitConverter.ToUInt64(auxv, i) == type)
            {
                return BitConverter.ToUInt64(auxv, i + 8);
            }
        }
        return null;
    }

    /// <summary>
    /// Runs a program stopped at exec until the dynamic linker has mapped every library it links,
    /// before it relocates them or runs any constructor: the debugger rendezvous (what gdb uses),
    /// an int3 on <c>_dl_debug_state</c>, which the linker calls with <c>r_debug.r_state</c> =
    /// RT_ADD before it loads them and RT_CONSISTENT once they are mapped. A static program (no
    /// interpreter) or a linker without the symbols stays at exec.
    /// </summary>
    private static void RunUntilLibrariesMapped(int pid, Tracee tracee)
    {
        const int RT_CONSISTENT = 0, RStateOffset = 24;   // struct r_debug { int r_version; link_map *r_map; ElfW(Addr) r_brk; r_state; ... }
        if (Aux(pid, Sys.AT_BASE) is not ulong interpreterBase || interpreterBase == 0)
        {
            return;
        }
        MemoryMapping ld = ProcMaps.Read(pid).FirstOrDefault(m => m.Start == interpreterBase && m.Offset == 0);
        if (ld.Path is null || !ld.IsFileBacked)
        {
            return;
        }
        IReadOnlyList<Elf.ElfSymbol> symbols = Elf.ElfFile.Load(ld.Path).ReadSymbols(dynamic: true);
        Elf.ElfSymbol state = symbols.FirstOrDefault(s => s.Name == "_dl_debug_state" && s.Value != 0);
        Elf.ElfSymbol rDebug = symbols.FirstOrDefault(s => s.Name == "_r_debug" && s.Value != 0);
        if (state.Name is null || rDebug.Name is null)
        {
            return;
        }
        ulong brk = interpreterBase + state.Value;
        using ProcessMemory memory = ProcessMemory.Open(pid, writable: true);
        Span<byte> saved = stackalloc byte[1];
        Span<byte> word = stackalloc byte[4];
        if (!memory.TryRead(brk, saved))
        {
            return;
        }
        byte original = saved[0];
        for (int hit = 0; hit < 16; hit++)
        {
            if (hit > 0)
            {
                tracee.SingleStep();   // past the breakpointed instruction, run as it is
            }
            memory.Write(brk, [0xcc]);
            try
            {
                tracee.ContinueUntilTrap();
            }
            finally
            {
                memory.Write(brk, [original]);
            }
            user_regs_struct regs = tracee.GetRegs();
            if (regs.rip != brk + 1)
            {
                throw new HotwireException($"pid {pid} stopped at 0x{regs.rip:x} instead of the dynamic linker's rendezvous");
            }
            regs.rip = brk;
            tracee.SetRegs(regs);
            memory.TryRead(interpreterBase + rDebug.Value + RStateOffset, word);
            if (memory.TryRead(interpreterBase + rDebug.Value + RStateOffset, word) && BitConverter.ToInt32(word) == RT_CONSISTENT)
            {
                return;
            }
        }
    }

    private static string ResolveProgram(string program, out bool script)
    {
        string? found = program.Contains('/')
            ? program
            : (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, program)).FirstOrDefault(File.Exists);
        if (found is null || !File.Exists(found))
        {
            throw new HotwireException($"{program}: program not found");
        }
        if ((File.GetUnixFileMode(found) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) == 0)
        {
            throw new HotwireException($"{program}: not executable (chmod +x it)");
        }
        script = IsScript(found);
        if (!script)
        {
            Elf.ElfFile.Load(found); // a clear message for a non-ELF or non-x86-64 file, before anything starts
        }
        return Path.GetFullPath(found);
    }

    // "#!" first: the kernel runs it with its interpreter.
    private static bool IsScript(string path)
    {
        try
        {
            using FileStream f = File.OpenRead(path);
            return f.ReadByte() == '#' && f.ReadByte() == '!';
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static Tracee StopAtExec(int pid, string path)
    {
        int status;
        if (Ptrace.waitpid(pid, &status, 2 /* WUNTRACED */) != pid || !Ptrace.WIFSTOPPED(status))
        {
            throw new HotwireException($"cannot start {path}: the launcher exited early");
        }
        Tracee tracee = Tracee.Seize(pid, pid, Ptrace.PTRACE_O_TRACEEXEC);
        Ptrace.kill(pid, Ptrace.SIGCONT);
        tracee.WaitForExec();
        return tracee;
    }

    private static void Reap(int pid)
    {
        int status;
        Ptrace.waitpid(pid, &status, 0);
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
