using System.Diagnostics;
using L = Hotwire.Agent.AgentLayout;
using N = Hotwire.Interop.SyscallNumbers;

namespace Hotwire.Patching;

public sealed unsafe partial class Session
{
    private const ulong CloneFlags = Sys.CLONE_VM | Sys.CLONE_FS | Sys.CLONE_FILES | Sys.CLONE_SIGHAND | Sys.CLONE_THREAD | Sys.CLONE_SYSVSEM;
    private const int SIG_SETMASK = 2;
    private const ulong MainCodeSize = 64 * 1024;

    /// <summary>
    /// Injects the agent into running process <paramref name="pid"/>: one thread is stopped for a few
    /// system calls, restored exactly and let go; no other thread is stopped.
    /// </summary>
    /// <param name="image">the process's modules, if the caller has just read them (to check its filters first)</param>
    public static Session Attach(int pid, SessionOptions? options = null, ProcessImage? image = null)
    {
        image ??= ProcessImage.Load(pid);
        if (image.Pid != pid)
        {
            throw new ArgumentException($"the image is of pid {image.Pid}, not {pid}", nameof(image));
        }
        TargetChecks.Preflight(pid, image, options?.RelocateEntries ?? false);
        var execMappings = ProcMaps.Read(pid).Where(m => m.IsExecutable).ToList();
        var session = new Session(pid, image, launched: false, ProcessMemory.Open(pid, writable: true), execMappings) { Notice = options?.Notice };
        try
        {
            session.Bootstrap(TargetChecks.ChooseThread(pid), options ?? new SessionOptions());
        }
        catch
        {
            session._memory.Dispose();
            throw;
        }
        try
        {
            // Live patches an earlier Hotwire left are this session's too: tracing composes with
            // them, detach and the dead-man switch keep them.
            Livepatch.LivePatcher.Open(session);
            session.StartFollowingLibraries();
        }
        catch
        {
            session.Dispose();
            throw;
        }
        return session;
    }

    private void Bootstrap(int tid, SessionOptions options, Tracee? stopped = null)
    {
        Threads = new ThreadMigration(Pid, _memory, () => AgentTid, () => !Launched || _running, MovedPc, options.SkipSignalFrameSleds,
            options.StopRequested, () => Notice);
        Poke = new PokeBatch(Pid, _memory, Threads, _execMappings0);
        _relocateEntries = options.RelocateEntries;
        // ---- plan the memfd: [data | main code | a trampoline region per module] ----
        var sites = Image.AllSites.OrderBy(s => s.Address).ToList();
        int n = sites.Count;
        ulong siteTable = L.HeaderSize + 64;    // its count in the u64 before it
        ulong batchList = Align(siteTable + (ulong)n * L.SiteEntrySize, 4096);
        ulong restoreList = Align(batchList + (ulong)n * L.BatchEntrySize, 4096);
        Poke.RangeCapacity = 65536;
        ulong rangeList = Align(restoreList + (ulong)n * L.BatchEntrySize, 4096);
        ulong allRanges = Align(rangeList + (ulong)Poke.RangeCapacity * L.RangeEntrySize, 4096) + 64;  // its count before it
        ulong stack = Align(allRanges + (ulong)Poke.RangeCapacity * L.RangeEntrySize, 4096);
        ulong heap = stack + L.AgentStackSize;
        ulong dataNeeded = Align(heap + (64UL << 20) + (ulong)n * (64 + options.ExtraSharedBytesPerSite) + options.ExtraSharedBytes, 2UL << 20);
        var modules = Image.Modules.Where(m => m.Sites.Count > 0).ToList();

        // An earlier Hotwire's block is taken over when nothing can run through it any more; a
        // new one is made roomy (sparse: untouched pages cost nothing) so that the next session's
        // tracer, whatever its buffers, fits in it too.
        EarlierBlock? earlier = stopped is null ? ReusableBlock(dataNeeded, modules, RegionSize, ProcMaps.Read(Pid)) : null;
        ulong dataSize = earlier?.DataSize ?? Math.Max(dataNeeded, 8UL << 30);
        var regions = new Dictionary<LoadedModule, CodeRegion>();
        ulong memfdNext = dataSize + MainCodeSize;
        foreach (LoadedModule m in modules)
        {
            if (earlier?.Regions.First(r => r.ModuleStart == m.Start) is { } r)
            {
                regions[m] = new CodeRegion(m.Start, r.Address, r.MemfdOffset, r.Size);
                continue;
            }
            regions[m] = new CodeRegion(m.Start, 0, memfdNext, RegionSize(m));
            memfdNext += RegionSize(m);
        }
        // An earlier block's other regions (near the dynamic linker, for its rendezvous stub; near
        // libraries loaded after that attach) stay this session's, described again.
        foreach (EarlierRegion r in earlier?.Regions ?? [])
        {
            if (Image.Modules.FirstOrDefault(m => m.Start == r.ModuleStart) is { } m && !regions.ContainsKey(m))
            {
                regions[m] = new CodeRegion(m.Start, r.Address, r.MemfdOffset, r.Size);
            }
        }
        // Then room for the trampolines of libraries loaded later (Session.Modules.cs).
        ulong total = earlier?.Total ?? memfdNext + LateRegionSpace;
        _lateNext = earlier is null ? memfdNext : earlier.Regions.Select(r => r.MemfdOffset + r.Size).Append(dataSize + MainCodeSize).Max();
        _initialSiteCount = n;
        _listCapacity = n;
        _heapStart = heap;
        _heapEnd = dataSize;
        Poke.ListOffset = batchList;
        Poke.RangeListOffset = rangeList;

        foreach (PatchSite p in sites)
        {
            LoadedModule owner = modules.First(m => p.Address >= m.Start && p.Address < m.End);
            Table.Add(new SiteRecord(Table.NextIndex, p, regions[owner]));
        }

        _plan = new Plan(total, dataSize, regions, modules, siteTable, batchList, restoreList, rangeList, allRanges, stack);
        PtraceThread.Shared.Invoke(() =>
        {
            if (stopped is not null)
            {
                InjectAgent(stopped, interrupt: false, options);
            }
            else if (earlier is not null)
            {
                Reinject(earlier, Tracee.Seize(Pid, tid), options);
            }
            else
            {
                InjectAgentRetrying(tid, options);
            }
        });
        WriteSiteTable();
        WaitForAgent();
        ReleaseEarlierShadowStacks();
        _blockInode = ProcMaps.Read(Pid).First(m => m.Start == DataBase).Inode;
    }

    private ulong _blockInode;

    private void BootstrapStopped(Tracee stopped, SessionOptions options) => Bootstrap(-1, options, stopped);

    private sealed record Plan(ulong Total, ulong DataSize, Dictionary<LoadedModule, CodeRegion> Regions, List<LoadedModule> Modules,
        ulong SiteTable, ulong BatchList, ulong RestoreList, ulong RangeList, ulong AllRanges, ulong Stack);

    private Plan? _plan;

    // A busy target may map memory where Hotwire chose to put its block between the read of its
    // maps and the injected mmap (EEXIST): the addresses are chosen again from fresh maps.
    private void InjectAgentRetrying(int tid, SessionOptions options)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                InjectAgent(Tracee.Seize(Pid, tid), interrupt: true, options);
                return;
            }
            catch (AddressTakenException) when (attempt < 5)
            {
            }
        }
    }

    /// <summary>The bootstrap reported a failed step; it undid the steps before it.</summary>
    private sealed class BootstrapFailedException(int errno, string message) : HotwireException(message)
    {
        public int Errno { get; } = errno;
    }

    /// <summary>
    /// Unmaps a failed bootstrap's block, so that a failed attach leaves nothing behind: the
    /// thread that ran it is stopped once it has jumped back to its own code (it is a few
    /// instructions from there when the failure is reported) and made to call munmap.
    /// </summary>
    private void RemoveBootstrapBlock(BootstrapBlock.Layout boot, ulong syscallInsn)
    {
        PtraceThread.Shared.Invoke(() =>
        {
            for (int attempt = 0; attempt < 1000; attempt++)
            {
                Tracee t;
                try
                {
                    t = Tracee.Seize(Pid, _bootTid);
                }
                catch (HotwireException)
                {
                    return;   // the thread is gone: the next attach finds the block unused and the same addresses taken
                }
                try
                {
                    t.Interrupt();
                    ulong pc = t.GetRegs().rip;
                    if (pc < boot.Base || pc >= boot.Base + boot.Size)
                    {
                        var caller = new RemoteCaller(t, syscallInsn);
                        caller.Syscall(N.munmap, boot.Base, boot.Size);
                        caller.Restore();
                        return;
                    }
                }
                catch (TargetExitedException)
                {
                    return;
                }
                finally
                {
                    t.Detach();
                }
                Thread.Sleep(1);
            }
        });
    }

    /// <summary>The address Hotwire chose was taken meanwhile (EEXIST); the target was left as it was.</summary>
    private sealed class AddressTakenException(string message) : HotwireException(message);

    /// <summary>
    /// Sets Hotwire up in the target with one thread held for a single injected system call: an
    /// mmap of the bootstrap block. Everything else — memfd, mappings, SIGTRAP handler, membarrier,
    /// pidfd, the agent thread — the thread does itself, running <see cref="BootstrapBlock"/> code that
    /// ends by putting its registers back (DESIGN.md §3; the kernel detaches a dead tracer's
    /// tracees as they are, so a long hold was a window in which Hotwire's death killed the target).
    /// In launch mode (<paramref name="interrupt"/> false) the thread stays held: the bootstrap
    /// ends in an int3, and its registers are put back here.
    /// </summary>
    private void InjectAgent(Tracee tracee, bool interrupt, SessionOptions options)
    {
        (ulong total, ulong dataSize, Dictionary<LoadedModule, CodeRegion> regions, List<LoadedModule> modules,
            ulong siteTable, ulong batchList, ulong restoreList, ulong rangeList, ulong allRanges, ulong stack) = _plan!;
        // Everything is decided and generated before the thread stops: addresses, agent code,
        // header, bootstrap. During the stop only bytes are written.
        ulong syscallInsn = RemoteCaller.FindSyscallInstruction(Pid, _memory);
        List<MemoryMapping> maps = ProcMaps.Read(Pid);
        var occupied = maps.Select(m => (m.Start, m.End)).ToList();
        const ulong BlockReserve = 256 * 1024;
        // Below the lowest library or anonymous mapping of the mmap area; never against [stack]
        // (it grows down into what is below it) or the kernel's [vdso]/[vvar].
        ulong blockBase = TargetAddresses.FreeRange(occupied, maps.Where(m => !m.Path.StartsWith('[')).Select(m => m.Start), BlockReserve + dataSize + MainCodeSize);
        DataBase = blockBase + BlockReserve;
        ulong codeBase = DataBase + dataSize;
        occupied.Add((blockBase, codeBase + MainCodeSize));
        var bootRegions = new List<BootstrapBlock.Region>();
        foreach (LoadedModule m in modules)
        {
            List<ulong> candidates = TrampolineCandidates(m, regions[m].Size, occupied);
            if (candidates.Count == 0)
            {
                throw new HotwireException($"no free address space within 2 GiB of {m.Name} in pid {Pid} for Hotwire's trampolines");
            }
            occupied.Add((candidates[0], candidates[0] + regions[m].Size));
            bootRegions.Add(new BootstrapBlock.Region(regions[m].Size, regions[m].MemfdOffset, candidates));
        }
        AgentEntryPoints code = AgentCode.Build(DataBase, codeBase);
        _restoreHolds = code.RestoreHolds;
        byte[] header;
        using (SharedRegion staging = SharedRegion.Anonymous(L.HeaderSize))
        {
            WriteHeader(staging, options, siteTable, batchList, restoreList, rangeList, allRanges, code);
            header = staging.Bytes(0, L.HeaderSize).ToArray();
        }
        BootstrapBlock.Layout boot = BootstrapBlock.Emit(new BootstrapBlock.Plan(blockBase, Environment.ProcessId, total, DataBase, dataSize, codeBase, MainCodeSize,
            header, code.Code, bootRegions, code.AgentEntry, DataAddress(stack + L.AgentStackSize - 64), CloneFlags, StopWhenDone: !interrupt));
        if (boot.Size > BlockReserve)
        {
            throw new HotwireException($"Hotwire's bootstrap block is {boot.Size} bytes, more than the {BlockReserve} reserved");
        }

        HoldAndHandOver(tracee, interrupt, syscallInsn, boot, map: true);
        int fd, tid;
        ulong[] placed;
        try
        {
            (fd, tid) = WaitForBootstrap(boot, bootRegions.Count, out placed);
        }
        catch (BootstrapFailedException failed)
        {
            // The bootstrap undid its own steps; its block goes too, once the thread has left it.
            RemoveBootstrapBlock(boot, syscallInsn);
            if (failed.Errno == 17)
            {
                throw new AddressTakenException(failed.Message);   // EEXIST: chosen again from fresh maps
            }
            throw;
        }
        for (int i = 0; i < modules.Count; i++)
        {
            regions[modules[i]].TargetAddress = placed[i];
        }
        UseBlock(SharedRegion.MapTargetFd(Pid, fd, total));
        AgentTid = tid;
        DescribeBlock(Shared, dataSize, codeBase, total, blockBase, boot.Size, fd);
    }

    /// <summary>
    /// Sets Hotwire up in an earlier block (<see cref="TakeOver"/>): the new header and site table
    /// are written from here, the bootstrap goes into the block's bootstrap area, and the thread is
    /// held only while its registers are read and pointed there: no system call is injected.
    /// </summary>
    private void Reinject(EarlierBlock earlier, Tracee tracee, SessionOptions options)
    {
        (ulong total, ulong dataSize, _, _, ulong siteTable, ulong batchList, ulong restoreList, ulong rangeList, ulong allRanges, ulong stack) = _plan!;
        DataBase = earlier.DataBase;
        AgentEntryPoints code = AgentCode.Build(DataBase, earlier.CodeBase);
        _restoreHolds = code.RestoreHolds;
        BootstrapBlock.Layout boot = BootstrapBlock.Emit(new BootstrapBlock.Plan(earlier.BootArea, Environment.ProcessId, total, DataBase, dataSize, earlier.CodeBase,
            MainCodeSize, [], [], [], code.AgentEntry, DataAddress(stack + L.AgentStackSize - 64), CloneFlags, StopWhenDone: false, ReuseFd: earlier.Fd));
        if (boot.Size > earlier.BootSize)
        {
            tracee.Detach();
            throw new HotwireException($"Hotwire's bootstrap ({boot.Size} bytes) does not fit in the earlier block's area ({earlier.BootSize} bytes)");
        }
        try
        {
            TakeOver(earlier);
            Shared.Bytes(0, L.HeaderSize).Clear();
            WriteHeader(Shared, options, siteTable, batchList, restoreList, rangeList, allRanges, code);
            earlier.OldSigaction.CopyTo(Shared.Bytes(L.OldSigaction, 32));
            Shared.WriteU64(L.AgentState, 0);
            DescribeBlock(Shared, dataSize, earlier.CodeBase, total, earlier.BootArea, earlier.BootSize, earlier.Fd);
            WriteTarget(earlier.BootArea, boot.Code);
        }
        catch
        {
            tracee.Detach();
            throw;
        }
        try
        {
            HoldAndHandOver(tracee, interrupt: true, RemoteCaller.FindSyscallInstruction(Pid, _memory), boot, map: false);
            (_, int tid) = WaitForBootstrap(boot, 0, out _);
            AgentTid = tid;
        }
        catch (BootstrapFailedException)
        {
            Shared.WriteU64(L.AgentState, 2);   // no agent started: the block stays one a later Hotwire can take over
            throw;
        }
    }

    // Stops the thread (unless launch mode holds it already), maps the bootstrap block with one
    // injected mmap when asked, writes the thread's registers into the block and points it there.
    private void HoldAndHandOver(Tracee tracee, bool interrupt, ulong syscallInsn, BootstrapBlock.Layout boot, bool map)
    {
        var stopped = new Stopwatch();
        PtraceThread.Shared.Invoke(() =>
        {
            RemoteCaller? caller = null;
            bool handedOver = false;
            try
            {
                if (interrupt)
                {
                    tracee.Interrupt();
                }
                stopped.Start();
                caller = new RemoteCaller(tracee, syscallInsn);
                _bootTid = tracee.Tid;
                if (map)
                {
                    long at = caller.Syscall(N.mmap, boot.Base, boot.Size, Sys.PROT_READ | Sys.PROT_WRITE | Sys.PROT_EXEC,
                        Sys.MAP_PRIVATE | Sys.MAP_ANONYMOUS | Sys.MAP_FIXED_NOREPLACE, ulong.MaxValue, 0);
                    if (at != (long)boot.Base)
                    {
                        if (at > 0)
                        {
                            caller.Syscall(N.munmap, (ulong)at, boot.Size);
                        }
                        if (at == -17 || at > 0)
                        {
                            throw new AddressTakenException($"pid {Pid} mapped memory where Hotwire chose to put its bootstrap");
                        }
                        Check(at, "mmap (bootstrap)");
                    }
                    WriteTarget(boot.Base, boot.Code);
                }
                WriteTarget(boot.RegisterSlots, BootstrapBlock.RegisterSlots(caller.Saved));
                user_regs_struct r = caller.Saved;
                r.rip = boot.Base;
                r.orig_rax = ulong.MaxValue;   // no syscall restart: the bootstrap does the thread's own
                r.eflags &= ~0x100UL;
                tracee.SetRegs(r);
                handedOver = true;
                if (!interrupt)
                {
                    tracee.ContinueUntilTrap();  // launch: the bootstrap's closing int3
                    caller.Restore();
                }
            }
            catch when (!handedOver && caller is not null)
            {
                caller.Restore();
                throw;
            }
            finally
            {
                if (interrupt)
                {
                    tracee.Detach();
                }
                LongestStop = stopped.Elapsed;
            }
        });
    }

    // The bootstrap runs in the target on its own: wait for its report (status 1 done, < 0 -errno).
    private (int Fd, int Tid) WaitForBootstrap(BootstrapBlock.Layout boot, int regions, out ulong[] placed)
    {
        var clock = Stopwatch.StartNew();
        Span<byte> word = stackalloc byte[8];
        while (true)
        {
            if (!_memory.TryRead(boot.Status, word))
            {
                throw new TargetExitedException(Pid, $"pid {Pid} exited while Hotwire was attaching");
            }
            long status = BitConverter.ToInt64(word);
            if (status == 1)
            {
                break;
            }
            if (status < 0)
            {
                _memory.TryRead(boot.Step, word);
                throw new BootstrapFailedException((int)-status,
                    Errors.InTarget($"setting Hotwire up (step {BitConverter.ToInt64(word)})", status, Pid, "the target was left as it was").Message);
            }
            if (clock.ElapsedMilliseconds > 10_000)
            {
                string task = $"/proc/{Pid}/task/{_bootTid}";
                string state = ProcStatus.Field($"{task}/status", "State") ?? "gone";
                string where = ReadOrEmpty($"{task}/syscall").Trim() + " " + ReadOrEmpty($"{task}/wchan").Trim();
                throw new HotwireException($"pid {Pid} did not run Hotwire's setup within 10 s (thread {_bootTid} is {state}, at: {where}, step {StepOf(boot)})");
            }
            Thread.Sleep(clock.ElapsedMilliseconds < 2 ? 0 : 1); // a few microseconds usually; then leave the CPU to the target
        }
        var bytes = new byte[16 + regions * 8];
        _memory.TryRead(boot.Fd, bytes.AsSpan(0, 8));
        _memory.TryRead(boot.Tid, bytes.AsSpan(8, 8));
        _memory.TryRead(boot.Regions, bytes.AsSpan(16));
        placed = new ulong[regions];
        for (int i = 0; i < regions; i++)
        {
            placed[i] = BitConverter.ToUInt64(bytes, 16 + i * 8);
        }
        return ((int)BitConverter.ToInt64(bytes, 0), (int)BitConverter.ToInt64(bytes, 8));
    }

    private int _bootTid;

    private long StepOf(BootstrapBlock.Layout boot)
    {
        Span<byte> word = stackalloc byte[8];
        return _memory.TryRead(boot.Step, word) ? BitConverter.ToInt64(word) : -1;
    }

    private static string ReadOrEmpty(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException)
        {
            return "";
        }
    }

    private void WriteHeader(SharedRegion h, SessionOptions options, ulong siteTable, ulong batchList, ulong restoreList, ulong rangeList, ulong allRanges, AgentEntryPoints code)
    {
        h.WriteU64(0, L.Magic);
        h.WriteU64(L.Int3Mode, options.SkipInt3Emulation ? 1UL : 0UL);
        h.WriteU64(L.DeathFinishesBatch, TestSwitches.DeathFinishesBatch ? 1UL : 0UL);
        h.WriteU64(L.SiteCount, 0); // the table is filled after the thread runs again (WriteSiteTable)
        // A block taken over may hold an earlier session's rendezvous and holds (their bytes were put
        // back by its restore): this session sets its own.
        h.WriteU64(L.RBrkAddr, 0);
        h.WriteU64(L.HoldCount, 0);
        h.WriteU64(L.LastHit, 0);
        h.WriteU64(L.SiteTable, DataAddress(siteTable));
        h.WriteU64(L.BatchList, DataAddress(batchList));
        h.WriteU64(L.RestoreList, DataAddress(restoreList));
        h.WriteU64(L.RangeList, DataAddress(rangeList));
        h.WriteU64(L.OwnerPid, (ulong)Environment.ProcessId);
        "hotwire-agent\0"u8.CopyTo(h.Bytes(L.AgentName, 14));
        // struct kernel_sigaction { handler, flags, restorer, mask }
        h.WriteU64(L.NewSigaction, code.SigtrapHandler);
        h.WriteU64(L.NewSigaction + 8, L.SA_SIGINFO | L.SA_ONSTACK | L.SA_RESTART | L.SA_RESTORER);
        h.WriteU64(L.NewSigaction + 16, code.Restorer);
        h.WriteU64(L.NewSigaction + 24, 0);
        h.WriteU64(L.DefaultSigaction, 0);
        h.WriteU64(L.WaitTimeout, 0);
        h.WriteU64(L.WaitTimeout + 8, 50_000_000);
        h.WriteU64(L.AllSignals, ~(1UL << (Ptrace.SIGTRAP - 1)));
        for (int len = 0; len < 16; len++)
        {
            h.At<byte>((ulong)(L.NopRecords + len * L.RecordSize + L.RecordKind)) = L.KindNop;
            h.At<byte>((ulong)(L.NopRecords + len * L.RecordSize + L.RecordAdvance)) = (byte)len;
        }
    }

    /// <summary>
    /// The site table and code ranges: proportional to the number of sites, so written once the
    /// stopped thread runs again (the agent reads them only for a batch or a restore, and sees no
    /// site before the count is published last).
    /// </summary>
    private void WriteSiteTable()
    {
        SharedRegion h = Shared;
        Table.WriteFirst(h, _plan!.SiteTable);
        int all = Poke.WriteRanges(Sites, _plan!.AllRanges, Poke.RangeCapacity);
        h.WriteU64(_plan.AllRanges - 8, (ulong)all);
        h.WriteU64(L.AllRangeList, DataAddress(_plan.AllRanges));
        h.WriteU64(L.AllRangeCount, (ulong)all);
        h.WriteU64(L.SiteCount, (ulong)Sites.Count);
        h.WriteU64(_plan.SiteTable - 8, (ulong)Sites.Count);   // the agent reads the count here: last
    }

    private void WaitForAgent()
    {
        var clock = Stopwatch.StartNew();
        while (Shared.ReadU64(L.AgentState) != 1)
        {
            if (clock.ElapsedMilliseconds > 5000)
            {
                throw new HotwireException($"Hotwire's agent thread did not start in pid {Pid}");
            }
            if (!Directory.Exists($"/proc/{Pid}/task"))
            {
                throw new TargetExitedException(Pid, $"pid {Pid} exited while Hotwire was attaching");
            }
            Thread.Sleep(1);
        }
    }

    /// <summary>Addresses for a trampoline region within ±2 GiB of every site of <paramref name="m"/> (<see cref="TargetAddresses"/>).</summary>
    private static List<ulong> TrampolineCandidates(LoadedModule m, ulong size, List<(ulong Start, ulong End)> occupied)
        => TargetAddresses.Candidates(m.Start, m.End, size, occupied);

    private void WriteTarget(ulong address, ReadOnlySpan<byte> bytes)
    {
        fixed (byte* p = bytes)
        {
            if (Libc.pwrite(MemoryFd, p, (nuint)bytes.Length, (long)address) != bytes.Length)
            {
                throw new HotwireException($"cannot write to the memory of pid {Pid}");
            }
        }
    }

    private int MemoryFd => _memory.Fd;

    private long Check(long result, string call)
    {
        return Errors.CheckInTarget(result, call, Pid, "the target was left as it was");
    }

    private static ulong Align(ulong value, ulong align) => (value + align - 1) & ~(align - 1);
}
