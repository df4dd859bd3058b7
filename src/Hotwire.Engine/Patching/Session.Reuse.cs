using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

public sealed unsafe partial class Session
{
    internal const ulong MainCodeBytes = MainCodeSize;

    /// <summary>True when this session took over the block an earlier Hotwire left (no new mapping).</summary>
    public bool ReusedBlock { get; private set; }

    /// <summary>Why an earlier block was not reused (null when there was none, or it was).</summary>
    public string? NotReusedBecause { get; private set; }

    /// <summary>
    /// An earlier block this session can take over: same modules, room enough, the same agent
    /// code, its memfd still open in the process, its bootstrap area still there, and nothing
    /// running through its code (<see cref="Quiescent"/>). Null, with the reason kept, otherwise.
    /// </summary>
    private EarlierBlock? ReusableBlock(ulong dataNeeded, IReadOnlyList<LoadedModule> modules, Func<LoadedModule, ulong> regionSize, List<MemoryMapping> maps)
    {
        List<EarlierBlock> blocks = EarlierBlock.Find(Pid, maps, _memory);
        if (blocks.Count == 0)
        {
            return null;
        }
        string? why = null;
        foreach (EarlierBlock b in blocks)
        {
            why = Unfit(b, dataNeeded, modules, regionSize, maps) ?? (TestSwitches.NoReuseQuiescenceCheck ? null : BusyAfterAWhile(b, maps));
            if (why is null)
            {
                return b;
            }
        }
        NotReusedBecause = why;
        return null;
    }

    private string? Unfit(EarlierBlock b, ulong dataNeeded, IReadOnlyList<LoadedModule> modules, Func<LoadedModule, ulong> regionSize, List<MemoryMapping> maps)
    {
        if (b.Pinned)
        {
            return "the process's GOT still points at its function_graph unwind hooks (frames had not returned at detach)";
        }
        if (b.DataSize < dataNeeded)
        {
            return $"its data area ({b.DataSize >> 20} MiB) is smaller than this session needs ({dataNeeded >> 20} MiB)";
        }
        // A region for every module with sites, and every region near a module still loaded (the
        // dynamic linker's, for its rendezvous stub, included).
        if (modules.Any(m => !b.Regions.Any(r => r.ModuleStart == m.Start && r.Size >= regionSize(m)))
            || b.Regions.Any(r => !Image.Modules.Any(m => m.Start == r.ModuleStart)))
        {
            return "the process's modules changed since";
        }
        string fd = $"/proc/{Pid}/fd/{b.Fd}";
        MemoryMapping data = maps.First(m => m.Start == b.DataBase);
        if (b.Fd < 0 || Libc.Inode(fd) != data.Inode)
        {
            return "its memfd is no longer open in the process";
        }
        if (!maps.Any(m => m.Start == b.BootArea && m.End - m.Start >= b.BootSize && m.Inode == 0 && m.Permissions.StartsWith("rwx", StringComparison.Ordinal)))
        {
            return "its bootstrap area is gone";
        }
        byte[] code = AgentCode.Build(b.DataBase, b.CodeBase).Code;
        var there = new byte[code.Length];
        if (!_memory.TryRead(b.CodeBase, there) || !there.AsSpan().SequenceEqual(code))
        {
            return "it holds another version's agent";
        }
        return null;
    }

    // A thread found inside the code is usually on its way out (the tail of a trap the dead-man
    // switch's restore caused, on a loaded machine): looked at again for 200 ms before giving up.
    private string? BusyAfterAWhile(EarlierBlock b, List<MemoryMapping> maps)
    {
        string? why = Busy(b, maps);
        for (int attempt = 0; attempt < 10 && why is not null && why.EndsWith("is inside its code", StringComparison.Ordinal); attempt++)
        {
            Thread.Sleep(20);
            why = Busy(b, maps);
        }
        return why;
    }

    /// <summary>
    /// Nothing can be running through the block's code: no other process maps it (a child forked
    /// while it was in use keeps the patched code it copied), no SIGTRAP of its handler in flight, and
    /// no thread's PC, or PC saved in a signal frame (a handler that interrupted a trampoline), in
    /// its code. A thread blocked in a system call is read from /proc; any other is stopped for a
    /// few microseconds. Its agent has exited and its sites are restored, so no thread can enter
    /// it anew.
    /// </summary>
    private string? Busy(EarlierBlock b, List<MemoryMapping> targetMaps)
    {
        if (OtherProcessMapping(targetMaps.First(m => m.Start == b.DataBase).Inode) is int other)
        {
            // A child forked while it was in use may still run its trampolines (its copy of the
            // code was never restored): rewriting them would kill it.
            return $"process {other} (forked from pid {Pid}) maps it too";
        }
        // A detach put the old disposition back only after two clean checks 20 ms apart: then one
        // look suffices. After the dead-man switch (its handler left installed) both are made.
        bool detachedCleanly = BitConverter.ToUInt64(b.Header, L.ExitRestoresSigaction) == 1 && BitConverter.ToUInt64(b.Header, L.DeadManFired) == 0;
        if (detachedCleanly ? SigtrapPendingAnywhere() : !NoSigtrapInFlight())
        {
            return "a SIGTRAP is pending in the process";
        }
        var ranges = b.CodeRanges.ToList();
        bool Inside(ulong pc) => ranges.Any(r => pc >= r.Start && pc < r.End);
        List<MemoryMapping> maps = ProcMaps.Read(Pid);
        bool Runs(ulong pc, ulong sp) => Inside(pc) || SignalFrames.Find(_memory, sp, maps).Any(f => Inside(f.Rip));
        string? busy = null;
        foreach (string task in Directory.EnumerateDirectories($"/proc/{Pid}/task"))
        {
            int tid = int.Parse(Path.GetFileName(task));
            // A thread blocked in a system call is looked at without stopping it (a stop is what
            // makes some calls fail with EINTR if Hotwire dies meanwhile): its registers as
            // /proc shows them, valid if it is still blocked in the same call afterwards.
            if (!TestSwitches.StopEveryThread && ProcSyscall.BlockedAt(task) is { } blocked)
            {
                bool inside = Runs(blocked.Pc, blocked.Sp);
                if (ProcSyscall.BlockedAt(task) == blocked)
                {
                    if (inside)
                    {
                        return $"thread {tid} is inside its code";
                    }
                    continue;
                }
            }
            PtraceThread.Shared.Invoke(() => Tracee.WhileStopped(Pid, tid, t =>
            {
                user_regs_struct regs = t.GetRegs();
                if (Runs(regs.rip, regs.rsp))
                {
                    busy = $"thread {tid} is inside its code";
                }
            }));
            if (busy is not null)
            {
                return busy;
            }
        }
        if (busy is null && b.ShadowMap != 0)
        {
            // Checked after the threads: none is inside the entry routine now, so none can push a frame.
            int records = (int)((b.ShadowMapSize - (b.ShadowRecords - b.ShadowMap)) >> Tracing.GraphTracer.RecordShift);
            if (Tracing.GraphTracer.ShadowStacksEmpty(_memory.TryRead, b.ShadowMap, b.ShadowRecords, records) != true)
            {
                busy = "function_graph frames have not returned through its code yet";
            }
        }
        return busy;
    }

    // Another process whose maps hold the memfd with this inode (a fork of the target's), if any.
    private int? OtherProcessMapping(ulong inode) => ProcessesMapping(inode).Cast<int?>().FirstOrDefault();

    // The processes other than the target whose maps hold Hotwire's memfd with this inode.
    private IEnumerable<int> ProcessesMapping(ulong inode) => EarlierBlock.ProcessesMapping(inode, Pid);

    private bool SigtrapPendingAnywhere() => Directory.Exists($"/proc/{Pid}/task")
        && Directory.EnumerateDirectories($"/proc/{Pid}/task").Any(task => ProcStatus.SignalPending(Path.Combine(task, "status"), Ptrace.SIGTRAP));

    /// <summary>After a takeover, the earlier graph tracer's shadow stacks (checked empty) go.</summary>
    private void ReleaseEarlierShadowStacks()
    {
        if (_takenOver is { ShadowMap: not 0 } b)
        {
            Channel.Syscall(SyscallNumbers.munmap, b.ShadowMap, b.ShadowMapSize);
        }
    }

    private EarlierBlock? _takenOver;

    /// <summary>
    /// Takes the earlier block over: its memfd mapped here, its data emptied, its trampoline
    /// regions' old code poisoned with int3 (as the kernel fills freed text), the new header
    /// written with the disposition the old agent chained to.
    /// </summary>
    private void TakeOver(EarlierBlock b)
    {
        UseBlock(SharedRegion.MapTargetFd(Pid, b.Fd, b.Total));
        Sys.madvise((nint)(Shared.Pointer + L.HeaderSize), (nuint)(b.DataSize - L.HeaderSize), Sys.MADV_REMOVE);
        foreach (EarlierRegion r in b.Regions)
        {
            Shared.Bytes(r.MemfdOffset, (int)Math.Min(r.Used, r.Size)).Fill(0xcc);
        }
        ReusedBlock = true;
        _takenOver = b;
    }

    /// <summary>The block's description in the header, for a later Hotwire.</summary>
    private void DescribeBlock(SharedRegion h, ulong dataSize, ulong codeBase, ulong total, ulong bootArea, ulong bootSize, int fd)
    {
        h.WriteU64(L.BlockDataSize, dataSize);
        h.WriteU64(L.BlockCodeBase, codeBase);
        h.WriteU64(L.BlockTotal, total);
        h.WriteU64(L.BlockBootArea, bootArea);
        h.WriteU64(L.BlockBootSize, bootSize);
        h.WriteU64(L.MemfdInTarget, (ulong)fd);
        var regions = _plan!.Regions.Values.ToList();
        if (regions.Count > L.RegionMax)
        {
            return;   // not described: never reused
        }
        foreach ((CodeRegion r, int i) in regions.Select((r, i) => (r, i)))
        {
            r.Describe(h, i);
        }
        h.WriteU64(L.RegionCount, (ulong)regions.Count);
        h.WriteU64(L.BlockVersion, L.BlockLayoutVersion);
    }
}
