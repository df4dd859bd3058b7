namespace Hotwire.Injection;

/// <summary>
/// Starting a program under Hotwire, stopped before its first instruction: the executable found
/// and checked, <c>sh -c 'kill -STOP $$ && exec prog'</c> spawned and seized with
/// PTRACE_O_TRACEEXEC (so .NET's Process never reaps it nor swallows a ptrace stop), run to its
/// exec and then to the dynamic linker's rendezvous once every library it links is mapped.
/// </summary>
public static unsafe class ProgramLauncher
{
    public static ulong AuxEntry(int pid) => Aux(pid, Sys.AT_ENTRY) ?? throw new HotwireException($"pid {pid} has no entry point in its auxiliary vector");

    /// <summary>An entry of the process's auxiliary vector (Sys.AT_*), or null.</summary>
    public static ulong? Aux(int pid, ulong type)
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
    public static void RunUntilLibrariesMapped(int pid, Tracee tracee)
    {
        if (LinkerRendezvous.Find(pid) is not (ulong brk, ulong rDebug))
        {
            return;
        }
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
            if (memory.TryRead(rDebug + LinkerRendezvous.RStateOffset, word) && BitConverter.ToInt32(word) == LinkerRendezvous.RT_CONSISTENT)
            {
                return;
            }
        }
    }

    public static string ResolveProgram(string program, out bool script)
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

    public static Tracee StopAtExec(int pid, string path)
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

    public static void Reap(int pid)
    {
        int status;
        Ptrace.waitpid(pid, &status, 0);
    }
}
