using Iced.Intel;
using L = Hotwire.Agent.AgentLayout;
using N = Hotwire.Interop.SyscallNumbers;

namespace Hotwire.Patching;

/// <summary>
/// Libraries loaded and unloaded after attach (docs/processes.md). The dynamic linker calls its debugger
/// rendezvous, <c>_dl_debug_state</c> (r_debug.r_brk), around every dlopen and dlclose, with
/// r_debug.r_state = RT_ADD or RT_DELETE before it changes the link map and RT_CONSISTENT after.
/// Hotwire hooks it, as gdb does, but with a jmp to a stub rather than an int3 (a thread that blocks
/// SIGTRAP would die of one); the stub tells Hotwire and makes the thread wait until Hotwire has
/// dealt with it (bounded: 2 s, and not at all once Hotwire is gone).
/// At RT_CONSISTENT after a dlopen the new library is mapped but not yet relocated, and none of its
/// code, constructors included, has run: its sites join the table and the ops whose filters match
/// them, before dlopen returns, so that every call is seen. After a dlclose its sites are forgotten
/// (its code is already unmapped) before its addresses can be used again.
/// </summary>
public sealed unsafe partial class Session
{
    /// <summary>Memfd room (sparse) for the trampolines of libraries loaded after attach.</summary>
    private const ulong LateRegionSpace = 1UL << 30;

    /// <summary>Site numbers kept for libraries loaded after attach (per-site counters are sized for them).</summary>
    internal const int LateSiteIds = 65536;


    private readonly object _gate = new();
    private ulong _lateNext;
    private int _initialSiteCount;
    private Thread? _listener;
    private volatile bool _stopListening;
    private ulong _rStateAddress;


    /// <summary>How many site numbers this session may hand out: per-site arrays are sized for it.</summary>
    internal int SiteIdCapacity => _initialSiteCount + LateSiteIds;

    /// <summary>True when Hotwire sees the libraries the process loads and unloads (the rendezvous is hooked).</summary>
    public bool FollowsLibraries => _listener is not null;

    /// <summary>Libraries with patch sites loaded since attach, whose sites joined the session.</summary>
    public int LibrariesLoaded { get; private set; }

    /// <summary>Libraries with sites unloaded since attach.</summary>
    public int LibrariesUnloaded { get; private set; }

    /// <summary>Milliseconds from the rendezvous hit to the new library's sites traced, newest last.</summary>
    public IReadOnlyList<double> LibraryLatencies => _latencies;

    private readonly List<double> _latencies = [];

    /// <summary>Called (on Hotwire's library thread) with a one-line message when following a library fails.</summary>
    public Action<string>? Notice { get; set; }

    /// <summary>Rendezvous hits whose thread stopped waiting for Hotwire (after 2 s).</summary>
    public ulong RendezvousTimeouts => _detached ? 0 : Shared.ReadU64(L.ModWaitsTimedOut);

    /// <summary>
    /// Hooks the rendezvous and starts the thread that answers it. Without a dynamic linker (a
    /// static program), or with a rendezvous Hotwire cannot hook safely (one line says so), the
    /// session works as before on the modules it has; <see cref="FollowsLibraries"/> says which.
    /// </summary>
    /// <param name="stopped">a launched program's thread, still held by ptrace (the hook is then written directly)</param>
    internal void StartFollowingLibraries(Injection.Tracee? stopped = null)
    {
        if (!HookRendezvous(stopped))
        {
            return;
        }
        _listener = new Thread(Listen) { IsBackground = true, Name = "hotwire-libraries" };
        _listener.Start();
    }

    private void StopFollowingLibraries()
    {
        if (_listener is null)
        {
            return;
        }
        _stopListening = true;
        Sys.FutexWake((uint*)(Shared.Pointer + L.ModSeq), int.MaxValue);
        if (Thread.CurrentThread != _listener)
        {
            _listener.Join(TimeSpan.FromSeconds(5));
        }
    }

    private bool HookRendezvous(Injection.Tracee? stopped)
    {
        if (LinkerRendezvous.Find(Pid) is not (ulong brk, ulong rDebug))
        {
            return false;
        }
        // No int3: a thread that blocks SIGTRAP (a worker with every signal blocked, calling
        // getaddrinfo, which dlopens NSS modules) would be killed by the kernel on one. The
        // rendezvous is a `ret` followed by alignment padding; one aligned 8-byte store turns its
        // first 5 bytes into a jmp to our stub: a thread sees the `ret` or the jmp, never a mix.
        var code = new byte[16];
        if ((brk & 7) != 0 || !_memory.TryRead(brk, code) || !IsRetThenPadding(code, brk))
        {
            Notice?.Invoke($"the dynamic linker's rendezvous in pid {Pid} is not a `ret` followed by padding ({Convert.ToHexString(code, 0, 8).ToLowerInvariant()}): Hotwire cannot hook it safely, so libraries loaded from now on are not traced");
            return false;
        }
        LoadedModule? ld = Image.Modules.FirstOrDefault(m => brk >= m.Start && brk < m.End);
        MemoryMapping text = ProcMaps.Read(Pid).First(m => brk >= m.Start && brk < m.End);
        if (ld is null)
        {
            return false;
        }
        lock (_gate)
        {
            CodeRegion region = _plan!.Regions.TryGetValue(ld, out CodeRegion? r) ? r : MapLateRegion(ld);
            _rendezvousRegion = region;
            ulong stub = PlaceIn(region, at => AgentCode.RendezvousStub(at, DataAddress(0), brk));
            if (!SitePlanner.InReach(brk, stub))
            {
                return false;
            }
            ulong original = BitConverter.ToUInt64(code);
            ulong hooked = (original & ~0xff_ffff_ffffUL) | SitePlanner.Bytes(new SiteDecision(SiteShape.Jump, stub, null), brk, 5).Lo;
            _rStateAddress = rDebug + LinkerRendezvous.RStateOffset;
            Shared.WriteU64(L.RBrkOriginal, original);
            Shared.WriteU64(L.RBrkHooked, hooked);
            Shared.WriteU64(L.RBrkProt, (ulong)text.Protection);
            Shared.WriteU32(L.ModAck, Shared.ReadU32(L.ModSeq));
            Shared.WriteU64(L.RBrkAddr, brk);   // before the hook: restore and the dead-man switch know it from now on
            if (stopped is not null)
            {
                _memory.Write(brk, BitConverter.GetBytes(hooked));   // the only thread is held: no one runs it meanwhile
            }
            else
            {
                Channel.StoreWord(brk, hooked);
                Channel.Syscall(N.membarrier, Sys.MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0);
            }
        }
        return true;
    }

    // A `ret` at the first byte and nothing executable after it up to the end of its word (NOPs or int3 padding).
    private static bool IsRetThenPadding(byte[] code, ulong at)
    {
        var decoder = Decoder.Create(64, code, at);
        Instruction first = decoder.Decode();
        if (first.Mnemonic != Mnemonic.Ret || first.Length != 1 || first.OpCount != 0)
        {
            return false;
        }
        while (decoder.IP < at + 8)
        {
            Instruction pad = decoder.Decode();
            if (pad.Mnemonic is not (Mnemonic.Nop or Mnemonic.Int3))
            {
                return false;
            }
        }
        return true;
    }

    private CodeRegion? _rendezvousRegion;
    private ulong _restoreHolds;   // the agent's routine that puts every hold's bytes back

    // Code placed in one region (the stubs of the rendezvous and the holds, near what jumps to them).
    private ulong PlaceIn(CodeRegion region, Func<ulong, byte[]> assemble)
        => region.Place(Shared, assemble(region.TargetAddress + region.Used), 64, "trampoline space near the dynamic linker is exhausted");

    private void Listen()
    {
        uint* seq = (uint*)(Shared.Pointer + L.ModSeq);
        uint seen = Volatile.Read(ref *seq);
        while (!_stopListening)
        {
            uint now = Volatile.Read(ref *seq);
            if (now == seen)
            {
                Sys.FutexWait(seq, seen, 200_000_000);
                continue;
            }
            long started = System.Diagnostics.Stopwatch.GetTimestamp();
            try
            {
                lock (_gate)
                {
                    if (!_detached && !_stopListening)
                    {
                        FollowLibraries(started);
                        TakeHold();
                    }
                }
            }
            catch (Exception e)
            {
                // The thread at the rendezvous must go on whatever happened here; the session keeps its other sites.
                Notice?.Invoke($"following a library loaded or unloaded in pid {Pid} failed: {e.Message}");
            }
            seen = now;
            if (_detached)
            {
                return;
            }
            Volatile.Write(ref *(uint*)(Shared.Pointer + L.ModAck), now);
            Sys.FutexWake((uint*)(Shared.Pointer + L.ModAck), int.MaxValue);
        }
    }

    /// <summary>At a consistent link map: the libraries that came get sites and ops, those that went lose them.</summary>
    private void FollowLibraries(long started)
    {
        Span<byte> state = stackalloc byte[4];
        if (!_memory.TryRead(_rStateAddress, state) || BitConverter.ToInt32(state) != LinkerRendezvous.RT_CONSISTENT)
        {
            return;   // RT_ADD / RT_DELETE: the link map is about to change; act once it has
        }
        if (TestSwitches.AckBeforeTracing)
        {
            Volatile.Write(ref *(uint*)(Shared.Pointer + L.ModAck), Volatile.Read(ref *(uint*)(Shared.Pointer + L.ModSeq)));
            Sys.FutexWake((uint*)(Shared.Pointer + L.ModAck), int.MaxValue);
            Thread.Sleep(50);   // and the thread surely runs on before tracing (the teeth must not depend on a race)
        }
        ProcessImage now = ProcessImage.Load(Pid, Image);
        var before = new HashSet<LoadedModule>(Image.Modules);
        var after = new HashSet<LoadedModule>(now.Modules);
        List<LoadedModule> cameAll = now.Modules.Where(m => !before.Contains(m)).ToList();
        if (_awaitingRelocation is not null && _awaitingRelocation.Any(m => !after.Contains(m)))
        {
            ReleaseHolds();   // a library unloaded before it ran (its dlopen failed)
        }
        // With --relocate, a library without sites may get relocated entries when it comes, and
        // loses them (like sites) when it goes: its code is unmapped, nothing may be written there.
        bool relocateLate = _relocateEntries && Registry.Registered.Any(o => !o.Redirects && o.TakesLateSites);
        List<LoadedModule> gone = Image.Modules.Where(m => !after.Contains(m)
            && (m.Sites.Count > 0 || Sites.Any(s => !s.Gone && s.Address >= m.Start && s.Address < m.End))).ToList();
        List<LoadedModule> came = cameAll.Where(m => m.Sites.Count > 0 || relocateLate).ToList();
        Image = now;
        if (cameAll.Count > 0)
        {
            SetHolds(cameAll);
        }
        if (gone.Count == 0 && came.Count == 0)
        {
            return;
        }
        Poke.ExecMappings = ProcMaps.Read(Pid).Where(m => m.IsExecutable).ToList();
        foreach (LoadedModule m in gone)
        {
            foreach (SiteRecord s in Sites.Where(s => !s.Gone && s.Address >= m.Start && s.Address < m.End))
            {
                Table.Forget(s);
                Registry.Remove(s);
            }
            _plan!.Regions.Remove(m);
            LibrariesUnloaded++;
        }
        var added = new List<SiteRecord>();
        foreach (LoadedModule m in came)
        {
            if (Table.NextIndex + m.Sites.Count > SiteIdCapacity)
            {
                Notice?.Invoke($"{m.Name} loaded in pid {Pid} is not traced: the session has numbered {SiteIdCapacity} sites, its most");
                continue;
            }
            CodeRegion region = MapLateRegion(m);
            foreach (PatchSite p in m.Sites.OrderBy(p => p.Address))
            {
                var r = new SiteRecord(Table.NextIndex, p, region) { Fresh = true };
                Table.Add(r);
                added.Add(r);
            }
            LibrariesLoaded++;
        }
        _allSites = null;
        _functionNames = null;
        ForgetRelocatableCandidates();
        RebuildSiteTable();
        if (relocateLate)
        {
            added.AddRange(RelocateLate(came));
        }
        foreach (Ops o in Registry.Registered.Where(o => !o.Redirects && o.TakesLateSites))
        {
            FunctionFilter filter = o.BuildFilter();
            List<SiteRecord> chosen = Registry.ChosenBy(o);
            foreach (SiteRecord s in added.Where(s => filter.Matches(s.Site)))
            {
                s.Ops.Add(o);
                chosen.Add(s);
                o.LateSites.Add(s.Index);
            }
        }
        try
        {
            Apply(added);
        }
        finally
        {
            foreach (SiteRecord s in added)
            {
                s.Fresh = false;
            }
        }
        if (added.Count > 0)
        {
            _latencies.Add(System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
    }

    internal bool IsMapped(ulong address) => ProcMaps.Read(Pid).Any(m => address >= m.Start && address < m.End);

    private readonly List<Action<IReadOnlyList<LoadedModule>>> _whenRelocated = [];
    private List<LoadedModule>? _awaitingRelocation;

    /// <summary>
    /// Runs <paramref name="action"/> with the libraries each dlopen brings, once the dynamic linker
    /// has relocated them and before any of their code runs (their initialisers hold the thread):
    /// GOT slots written earlier would be overwritten by the relocation.
    /// </summary>
    internal void WhenModulesRelocated(Action<IReadOnlyList<LoadedModule>> action)
    {
        lock (_gate)
        {
            _whenRelocated.Add(action);
        }
    }

    // A jmp over the first 5 bytes of each new library's initialiser (.init, which every
    // gcc-linked library has; the dynamic linker runs them after relocating all of the libraries)
    // to a stub that waits for Hotwire: the first one taken is the moment. No int3 (a thread that
    // blocks SIGTRAP would die of it); no thread has run any of this code yet, so the bytes are
    // simply written.
    private void SetHolds(List<LoadedModule> modules)
    {
        if (_whenRelocated.Count == 0 || TestSwitches.NoHolds)
        {
            return;
        }
        ReleaseHolds();
        List<MemoryMapping> maps = ProcMaps.Read(Pid);
        var holds = new List<(ulong Address, byte[] Original, int Prot, byte[] Jump)>();
        foreach (LoadedModule m in modules)
        {
            if (m.Elf.FindSection(".init") is not { Size: >= 5 } init || holds.Count == L.HoldMax)
            {
                continue;
            }
            ulong at = m.Bias + init.Address;
            MemoryMapping map = maps.FirstOrDefault(x => at >= x.Start && at + 5 <= x.End);
            var original = new byte[5];
            if (map.End == 0 || !map.IsExecutable || !_memory.TryRead(at, original))
            {
                continue;
            }
            CodeRegion region = _plan!.Regions.Values.Append(_rendezvousRegion).OfType<CodeRegion>()
                .FirstOrDefault(r => SitePlanner.InReach(at, r.TargetAddress) && SitePlanner.InReach(at, r.TargetAddress + r.Size))
                ?? MapLateRegion(m);
            ulong stub = PlaceIn(region, a => AgentCode.HoldStub(a, DataAddress(0), at, _restoreHolds));
            byte[] jump = SitePlanner.Bytes(new SiteDecision(SiteShape.Jump, stub, null), at, 5).ToArray(5);
            holds.Add((at, original, map.Protection, jump));
        }
        if (holds.Count == 0)
        {
            Notice?.Invoke($"{string.Join(", ", modules.Select(m => m.Name))} loaded in pid {Pid} have no initialiser to wait at: C++ exceptions thrown through them may not be seen by the graph tracer");
            return;
        }
        for (int i = 0; i < holds.Count; i++)
        {
            ulong e = (ulong)(L.HoldTable + i * L.HoldEntrySize);
            Shared.WriteU64(e, holds[i].Address);
            holds[i].Original.CopyTo(Shared.Bytes(e + 8, 5));
            Shared.At<byte>(e + 13) = (byte)holds[i].Prot;
        }
        Shared.WriteU64(L.HoldCount, (ulong)holds.Count);
        foreach ((ulong at, _, _, byte[] jump) in holds)
        {
            _memory.Write(at, jump);
        }
        _awaitingRelocation = modules;
    }

    // After a hit at a hold: the libraries are relocated; hook them, then take the holds away.
    private void TakeHold()
    {
        if (_awaitingRelocation is null)
        {
            return;
        }
        ulong hit = Shared.ReadU64(L.LastHit);
        int count = (int)Shared.ReadU64(L.HoldCount);
        if (!Enumerable.Range(0, count).Any(i => Shared.ReadU64((ulong)(L.HoldTable + i * L.HoldEntrySize)) == hit))
        {
            return;
        }
        List<LoadedModule> modules = _awaitingRelocation;
        try
        {
            foreach (Action<IReadOnlyList<LoadedModule>> action in _whenRelocated)
            {
                action(modules);
            }
        }
        finally
        {
            ReleaseHolds();
        }
    }

    // The initialisers' bytes back, then every core serialised before the waiting thread goes on.
    private void ReleaseHolds()
    {
        int count = (int)Shared.ReadU64(L.HoldCount);
        Span<byte> b = stackalloc byte[1];
        bool wrote = false;
        for (int i = 0; i < count; i++)
        {
            ulong e = (ulong)(L.HoldTable + i * L.HoldEntrySize);
            ulong at = Shared.ReadU64(e);
            if (_memory.TryRead(at, b) && b[0] == 0xe9)
            {
                _memory.Write(at, Shared.Bytes(e + 8, 5).ToArray());
                wrote = true;
            }
        }
        if (wrote)
        {
            Channel.Syscall(N.membarrier, Sys.MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0);
        }
        Shared.WriteU64(L.HoldCount, 0);
        _awaitingRelocation = null;
    }

    /// <summary>
    /// A new site table (sorted by address, the unloaded libraries' sites left out) and the lists
    /// sized by it, each switched by one store: the SIGTRAP handler and the dead-man switch may
    /// read the table at any moment, and see the old one or the new one, each with its count.
    /// </summary>
    private void RebuildSiteTable()
    {
        int liveCount = Sites.Count(s => !s.Gone);
        ulong table = Heap.Allocate(64 + (ulong)liveCount * L.SiteEntrySize, 64) + 64;
        // A relocated entry's base is its original bytes, which a restore's int3 (the dead-man
        // switch's too) emulates as a jump to the relocated copy.
        List<SiteRecord> live = Table.Rebuild(Shared, table, s => s.Relocation is { } relocation ? Records.Jump(relocation.Relocated) : 0);
        // Lists the agent fills or reads up to the table's count: bigger ones first.
        if (live.Count > _listCapacity)
        {
            _listCapacity = live.Count + 1024;
            ulong restore = Heap.Allocate((ulong)_listCapacity * L.BatchEntrySize, 64);
            Poke.ListOffset = Heap.Allocate((ulong)_listCapacity * L.BatchEntrySize, 64);
            Shared.WriteU64(L.RestoreList, DataAddress(restore));
            Shared.WriteU64(L.BatchList, DataAddress(Poke.ListOffset));
        }
        ulong ranges = Heap.Allocate(64 + (ulong)Poke.RangeCapacity * L.RangeEntrySize, 64) + 64;
        int count = Poke.WriteRanges(live, ranges, Poke.RangeCapacity);
        Shared.WriteU64(ranges - 8, (ulong)count);
        Interlocked.Exchange(ref Shared.At<ulong>(L.AllRangeList), DataAddress(ranges));
        Interlocked.Exchange(ref Shared.At<ulong>(L.SiteTable), DataAddress(table));
        Shared.WriteU64(L.AllRangeCount, (ulong)count);
        Shared.WriteU64(L.SiteCount, (ulong)live.Count);
    }

    private int _listCapacity;

    /// <summary>A trampoline region for a library loaded after attach, mapped by the agent within ±2 GiB of it.</summary>
    private CodeRegion MapLateRegion(LoadedModule m, int moreSites = 0)
    {
        const long EEXIST = 17;
        ulong size = Align(RegionSize(m) + (ulong)moreSites * 1024, 4096);
        if (_lateNext + size > _plan!.Total)
        {
            throw new HotwireException($"no room left in Hotwire's block for the trampolines of {m.Name}");
        }
        List<MemoryMapping> maps = ProcMaps.Read(Pid);
        List<ulong> candidates = TrampolineCandidates(m, size, maps.Select(x => (x.Start, x.End)).ToList());
        ulong fd = Shared.ReadU64(L.MemfdInTarget);
        foreach (ulong at in candidates.Take(16))
        {
            long r = Channel.Syscall(N.mmap, at, size, (ulong)(Sys.PROT_READ | Sys.PROT_EXEC), Sys.MAP_SHARED | Sys.MAP_FIXED_NOREPLACE, fd, _lateNext);
            if (r == -EEXIST || (r >= 0 && (ulong)r != at))
            {
                if (r >= 0)
                {
                    Channel.Syscall(N.munmap, (ulong)r, size);   // a kernel without MAP_FIXED_NOREPLACE put it elsewhere
                }
                continue;
            }
            if (r < 0)
            {
                throw Errors.InTarget($"mapping trampolines near {m.Name}", r, Pid);
            }
            var region = new CodeRegion(m.Start, at, _lateNext, size);
            _lateNext += size;
            _plan.Regions[m] = region;
            DescribeLateRegion(region);
            return region;
        }
        throw new HotwireException($"no free address space within 2 GiB of {m.Name} in pid {Pid} for Hotwire's trampolines");
    }

    // In the header's region table, for a later Hotwire that takes the block over (it poisons and
    // checks every region there); a block whose regions do not all fit is never taken over.
    private void DescribeLateRegion(CodeRegion r)
    {
        int count = (int)Shared.ReadU64(L.RegionCount);
        if (count >= L.RegionMax)
        {
            Shared.WriteU64(L.BlockVersion, 0);
            return;
        }
        r.Describe(Shared, count);
        Shared.WriteU64(L.RegionCount, (ulong)count + 1);
    }

    // Room for about three trampolines per site (a function-tracer trampoline with --args 6 is
    // about 350 bytes): `record -F '*'` and a live patch or tracer change on every function.
    // Sparse memfd: untouched pages cost nothing.
    private static ulong RegionSize(LoadedModule m) => TestSwitches.RegionBytes ?? Align(64 * 1024 + (ulong)m.Sites.Count * 1024, 4096);

    /// <summary>
    /// The region near <paramref name="s"/>'s module is full: another is mapped near it (as for a
    /// library loaded later) and becomes the region of every site that had the full one. Code
    /// placed in the full one stays where it is.
    /// </summary>
    private CodeRegion GrowRegion(SiteRecord s)
    {
        LoadedModule m = Image.Modules.FirstOrDefault(m => s.Address >= m.Start && s.Address < m.End)
            ?? throw new HotwireException("trampoline space near this module is exhausted; trace fewer functions");
        CodeRegion full = s.Region;
        CodeRegion region = MapLateRegion(m);
        foreach (SiteRecord other in Sites)
        {
            if (other.Region == full)
            {
                other.Region = region;
            }
        }
        return region;
    }
}
