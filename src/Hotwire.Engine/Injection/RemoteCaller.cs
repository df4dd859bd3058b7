namespace Hotwire.Injection;

/// <summary>
/// Runs system calls inside a stopped thread of the target: registers set to the call, RIP on a
/// <c>syscall</c> instruction, one PTRACE_SINGLESTEP. <c>orig_rax = -1</c> keeps the kernel's
/// syscall-restart logic away from our calls; the thread's own registers (and so its interrupted
/// syscall's restart) come back with <see cref="Restore"/>. Use on the <see cref="PtraceThread"/> only.
/// </summary>
public sealed class RemoteCaller
{
    private readonly Tracee _tracee;
    private readonly user_regs_struct _saved;

    public RemoteCaller(Tracee tracee, ulong syscallInstruction)
    {
        _tracee = tracee;
        _saved = tracee.GetRegs();
        SyscallInstruction = syscallInstruction;
    }

    public user_regs_struct Saved => _saved;

    public ulong SyscallInstruction { get; set; }

    /// <summary>A scratch area on the thread's stack, well below the red zone.</summary>
    public ulong StackScratch(int size) => ((_saved.rsp - 4096 - (ulong)size) & ~0xfUL);

    public long Syscall(long number, ulong a1 = 0, ulong a2 = 0, ulong a3 = 0, ulong a4 = 0, ulong a5 = 0, ulong a6 = 0)
        => SyscallAt(SyscallInstruction, number, a1, a2, a3, a4, a5, a6);

    public long SyscallAt(ulong instruction, long number, ulong a1 = 0, ulong a2 = 0, ulong a3 = 0, ulong a4 = 0, ulong a5 = 0, ulong a6 = 0)
    {
        user_regs_struct r = _saved;
        r.rax = (ulong)number;
        r.rdi = a1;
        r.rsi = a2;
        r.rdx = a3;
        r.r10 = a4;
        r.r8 = a5;
        r.r9 = a6;
        r.orig_rax = ulong.MaxValue;
        r.rip = instruction;
        r.eflags &= ~0x100UL; // TF: the kernel sets it for the step itself
        _tracee.SetRegs(r);
        _tracee.SingleStep();
        user_regs_struct after = _tracee.GetRegs();
        if (after.rip == instruction)
        {
            // Stopped inside a system call (at an exec stop: still in execve), the first step only
            // completes that call: the kernel reports a step trap at syscall exit. Step once more.
            _tracee.SetRegs(r);
            _tracee.SingleStep();
            after = _tracee.GetRegs();
        }
        if (after.rip != instruction + 2)
        {
            throw new HotwireException($"injected system call {number} in pid {_tracee.Pid} stopped at 0x{after.rip:x}, not after the syscall at 0x{instruction:x}; the target was not changed further");
        }
        return (long)after.rax;
    }

    public void Restore() => _tracee.SetRegs(_saved);

    /// <summary>Finds a <c>syscall</c> instruction in the target's executable memory (vDSO first, then libc, then any).</summary>
    public static ulong FindSyscallInstruction(int pid, IMemoryReader memory)
    {
        List<MemoryMapping> maps = ProcMaps.Read(pid);
        IEnumerable<MemoryMapping> ordered = maps.Where(m => m.IsExecutable)
            .OrderBy(m => m.Path == "[vdso]" ? 0 : m.Path.Contains("/libc.so", StringComparison.Ordinal) ? 1 : m.Path.Contains("/ld-linux", StringComparison.Ordinal) ? 2 : 3);
        foreach (MemoryMapping m in ordered)
        {
            if (m.Path == "[vsyscall]")
            {
                continue;
            }
            ulong size = Math.Min(m.End - m.Start, 4UL << 20);
            var buf = new byte[size];
            if (!memory.TryRead(m.Start, buf))
            {
                continue;
            }
            int i = buf.AsSpan().IndexOf([(byte)0x0f, (byte)0x05]);
            if (i >= 0)
            {
                return m.Start + (ulong)i;
            }
        }
        throw new HotwireException($"no syscall instruction found in the executable memory of pid {pid}; cannot inject");
    }
}
