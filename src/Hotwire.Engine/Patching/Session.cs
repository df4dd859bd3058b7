using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

public sealed class SessionOptions
{
    /// <summary>Test-only: the SIGTRAP handler skips the instruction being patched (the pre-2019 bug).</summary>
    public bool SkipInt3Emulation { get; init; }

    /// <summary>Extra shared memory to reserve for tracers' buffers (sparse: untouched pages cost nothing).</summary>
    public ulong ExtraSharedBytes { get; init; }

    /// <summary>Extra shared memory per patch site (a profiler's per-thread rows).</summary>
    public ulong ExtraSharedBytesPerSite { get; init; }

    /// <summary>
    /// Test-only: when NOP sleds are converted in a running process, leave the PCs saved in signal
    /// frames alone (only threads' current PCs are moved out of sleds: the bug this guards against).
    /// </summary>
    public bool SkipSignalFrameSleds { get; init; }

    /// <summary>One-line messages about what the session could not do for libraries loaded later (called from Hotwire's library thread).</summary>
    public Action<string>? Notice { get; init; }

    /// <summary>
    /// Ops' filters may also choose functions without a compiler site: their entries are relocated
    /// into detours (docs/any-binary.md).
    /// </summary>
    public bool RelocateEntries { get; init; }

    /// <summary>
    /// Polled while a batch waits for a thread another tracer holds inside an entry being rewritten
    /// (it may wait for as long as that tracer likes): true (Ctrl-C) ends the process Hotwire runs
    /// in at once, as SIGKILL would, after one notice; the agent's dead-man switch then puts every
    /// entry back. Nothing else can end a batch whose int3s are in.
    /// </summary>
    public Func<bool>? StopRequested { get; init; }
}

/// <summary>
/// Hotwire attached to one process: the agent injected, the site records, the ops, and batches of
/// rewrites run by the agent with the int3 protocol. All public members are for one caller thread.
/// </summary>
public sealed unsafe partial class Session : IDisposable, IOpsExecutor, IOpsHost
{

    private List<PatchSite>? _allSites;
    private HashSet<string>? _functionNames;
    private readonly ProcessMemory _memory;
    private readonly List<MemoryMapping> _execMappings0;
    private ulong _heapStart;
    private ulong _heapEnd;
    private bool _detached;

    private Session(int pid, ProcessImage image, bool launched, ProcessMemory memory, List<MemoryMapping> execMappings)
    {
        Pid = pid;
        Image = image;
        Launched = launched;
        _memory = memory;
        _execMappings0 = execMappings;
        Shared = null!;
    }

    public int Pid { get; }

    public ProcessImage Image { get; private set; }

    /// <summary>True when Hotwire started the process stopped at exec (no thread has run its code).</summary>
    public bool Launched { get; }

    public IReadOnlyList<SiteRecord> Sites => Table.Records;

    /// <summary>The sites by number, address and function, and the agent's copy.</summary>
    private SiteTable Table { get; } = new();

    private SharedRegion Shared { get; set; }

    /// <summary>The data area shared with the target: tracers' buffers, counters, emulation records.</summary>
    public SharedHeap Heap { get; private set; } = null!;

    /// <summary>The agent's command loop: batches, system calls and stores run in the target.</summary>
    public AgentChannel Channel { get; private set; } = null!;

    /// <summary>The target's threads as batches need them: held, or moved out of code being replaced.</summary>
    private ThreadMigration Threads { get; set; } = null!;

    /// <summary>The emulation records of the sites' instructions.</summary>
    private EmulationRecords Records { get; set; } = null!;

    /// <summary>The sites' trampolines.</summary>
    private Trampolines Trampolines { get; set; } = null!;

    /// <summary>Batches of site changes run by the agent with the int3 protocol.</summary>
    private PokeBatch Poke { get; set; } = null!;

    /// <summary>Hotwire's mapping of the block's memfd, once the agent has made it.</summary>
    private void UseBlock(SharedRegion shared)
    {
        Shared = shared;
        Heap = new SharedHeap(shared, DataBase, _heapStart, _heapEnd, _gate);
        Channel = new AgentChannel(Pid, shared, _gate);
        Records = new EmulationRecords(Heap);
        Trampolines = new Trampolines(shared, GrowRegion);
        Poke.Heap = Heap;
        Poke.Channel = Channel;
    }

    private ulong DataAddress(ulong offset) => DataBase + offset;

    internal ulong DataBase { get; private set; }

    public int AgentTid
    {
        get => Channel?.AgentTid ?? 0;
        private set => Channel.AgentTid = value;
    }

    /// <summary>membarrier(SYNC_CORE) calls the agent made: three per batch.</summary>
    public ulong Syncs => Stat(L.SyncCount);

    /// <summary>Threads that hit a temporary int3 and had the new instruction emulated.</summary>
    public ulong TrapsEmulated => Stat(L.TrapsEmulated);

    /// <summary>Traps whose batch had finished by the time the handler ran: the site was re-executed.</summary>
    public ulong TrapsStale => Stat(L.TrapsStale);

    /// <summary>SIGTRAPs that were not Hotwire's, passed on to the previous disposition.</summary>
    public ulong TrapsChained => Stat(L.TrapsChained);

    private readonly Dictionary<int, ulong> _finalStats = [];

    private ulong Stat(int field) => _detached && _finalStats.TryGetValue(field, out ulong v) ? v : _detached ? 0 : Shared.ReadU64((ulong)field);

    /// <summary>How long the injected thread was held stopped during attach.</summary>
    public TimeSpan LongestStop { get; private set; }

    public IEnumerable<SiteRecord> SitesOf(string function) => SitesByFunction[function];

    internal ILookup<string, SiteRecord> SitesByFunction => Table.ByFunction;

    /// <summary>
    /// Marks the block as one whose code stays in use after detach (GOT slots pointing into it):
    /// a later Hotwire does not take it over (see <see cref="EarlierBlock"/>) unless detach unpins it.
    /// </summary>
    internal void PinBlock() => Shared.WriteU64(L.Pinned, 1);

    /// <summary>
    /// A graph tracer's shadow stacks: a later Hotwire takes the block over only when every one is
    /// empty (no frame left to return through the block's code), then unmaps them. A second set
    /// in one session is not described: the block is pinned.
    /// </summary>
    internal void DescribeShadowStacks(ulong map, ulong size, ulong records)
    {
        if (Shared.ReadU64(L.ShadowMap) != 0)
        {
            PinBlock();
            return;
        }
        Shared.WriteU64(L.ShadowMapSize, size);
        Shared.WriteU64(L.ShadowRecords, records);
        Shared.WriteU64(L.ShadowMap, map);
    }

    /// <summary>
    /// Once every site is restored (nothing enters Hotwire's code any more), before the agent
    /// exits: <paramref name="unpin"/> undoes what pinned the block, or says it could not.
    /// </summary>
    internal void WhenRestored(Func<bool> unpin) => _whenRestored.Add(unpin);

    private readonly List<Func<bool>> _whenRestored = [];

    /// <summary>Reads the target's memory; false if it is unmapped (or the process gone).</summary>
    internal bool ReadTarget(ulong address, Span<byte> into) => _memory.TryRead(address, into);

    /// <summary>The live patches of the process, adopted at attach (see LivePatcher.Open).</summary>
    internal Livepatch.LivePatcher? Patcher { get; set; }

    public SiteRecord? SiteAt(ulong address) => Table.At(address);

    /// <summary>
    /// Places code shared by many sites (a tracer's common entry routine, its return handler) in
    /// a trampoline region: <paramref name="assemble"/> gets the address the code will run at.
    /// Like trampolines, it is never unmapped: a thread may be inside it after Hotwire is gone.
    /// </summary>
    internal ulong PlaceCode(Func<ulong, byte[]> assemble)
    {
        lock (_gate)
        {
            return PlaceCodeLocked(assemble);
        }
    }

    private ulong PlaceCodeLocked(Func<ulong, byte[]> assemble)
    {
        foreach (CodeRegion region in Sites.Where(s => !s.Gone).Select(s => s.Region).Distinct())
        {
            byte[] code = assemble(region.TargetAddress + region.Used);
            if (region.Fits(((ulong)code.Length + 63) & ~63UL))
            {
                return region.Place(Shared, code, 64, "");
            }
        }
        throw new HotwireException("trampoline space in the target is exhausted; trace fewer functions");
    }

    // ---------------------------------------------------------------- ops

    /// <summary>Attaches <paramref name="ops"/> to every site its filters choose, in one batch.</summary>
    public IReadOnlyList<SiteRecord> Register(Ops ops) => Change([], [ops])[ops];

    /// <summary>Detaches <paramref name="ops"/> from its sites, in one batch.</summary>
    public void Unregister(Ops ops)
    {
        ThrowIfDetached();
        if (Registry.Contains(ops))
        {
            Change([ops], []);
        }
    }

    /// <summary>
    /// Removes some ops and adds others in one batch: no call sees a state in between (a live
    /// patch replacing another never lets the original body run). Returns each added ops' sites.
    /// </summary>
    public Dictionary<Ops, IReadOnlyList<SiteRecord>> Change(IReadOnlyList<Ops> remove, IReadOnlyList<Ops> add)
    {
        lock (_gate)
        {
            return ChangeLocked(remove, add);
        }
    }

    private Dictionary<Ops, IReadOnlyList<SiteRecord>> ChangeLocked(IReadOnlyList<Ops> remove, IReadOnlyList<Ops> add)
    {
        ThrowIfDetached();
        return Registry.Change(remove, add);
    }

    /// <summary>
    /// Takes over ops a previous Hotwire left in place (a live patch): the sites hold its bytes
    /// already; nothing is written to the code.
    /// </summary>
    internal IReadOnlyList<SiteRecord> Adopt(Ops ops, IReadOnlyList<SiteRecord> sites)
    {
        lock (_gate)
        {
            return Registry.Adopt(ops, sites, AdoptSite);
        }
    }

    private void AdoptSite(SiteRecord s)
    {
        Span<byte> live = stackalloc byte[s.Length];
        (SiteBytes bytes, _) = CachedDesired(s);
        _memory.TryRead(s.Address, live);
        if (SiteBytes.From(live) != bytes)
        {
            throw new HotwireException($"{s.Function} in pid {Pid} does not hold the live patch recorded for it (someone else changed its code); nothing was changed");
        }
        // The base first: until SiteCurrent says the agent installed these bytes, a restore
        // (the dead-man switch) leaves the site alone; after, it puts back the same jmp.
        foreach (BaseChange b in BaseChanges([s]))
        {
            Table.SetBase(Shared, s, b.After, b.Emu);
        }
        Table.SetCurrent(Shared, s, bytes);
    }

    /// <summary>
    /// Puts a redirecting ops on exactly <paramref name="sites"/> and takes it off the others, in
    /// one batch (<see cref="OpsRegistry.SetSites"/>).
    /// </summary>
    internal void SetSites(Ops ops, IReadOnlyCollection<SiteRecord> sites, Action<IReadOnlyList<BaseChange>>? beforeBatch = null)
    {
        lock (_gate)
        {
            ThrowIfDetached();
            Registry.SetSites(ops, sites, beforeBatch);
        }
    }

    private OpsRegistry Registry => _registry ??= new OpsRegistry(this);

    private OpsRegistry? _registry;

    // ---------------------------------------------------------------- what ops get (IOpsHost)

    int IOpsHost.SiteIdCapacity => SiteIdCapacity;

    bool IOpsHost.IsDetached => IsDetached;

    ulong IOpsHost.PlaceCode(Func<ulong, byte[]> assemble) => PlaceCode(assemble);

    bool IOpsHost.ReadTarget(ulong address, Span<byte> into) => ReadTarget(address, into);

    bool IOpsHost.IsMapped(ulong address) => IsMapped(address);

    void IOpsHost.WhenLibrariesLoaded(Action<ProcessImage> action) => WhenLibrariesLoaded(action);

    void IOpsHost.WhenModulesRelocated(Action<IReadOnlyList<LoadedModule>> action) => WhenModulesRelocated(action);

    void IOpsHost.WhenRestored(Func<bool> unpin) => WhenRestored(unpin);

    void IOpsHost.DescribeShadowStacks(ulong map, ulong size, ulong records) => DescribeShadowStacks(map, size, records);

    void IOpsHost.PinBlock() => PinBlock();

    // ---------------------------------------------------------------- the executor (IOpsExecutor)

    List<SiteRecord> IOpsExecutor.Select(Ops ops)
    {
        _allSites ??= _relocateEntries ? [.. Image.AllSites, .. RelocatableCandidates()] : Image.AllSites.ToList();
        _functionNames ??= new HashSet<string>(_allSites.Select(p => p.Function), StringComparer.Ordinal);
        FunctionFilter filter = ops.BuildFilter();
        List<PatchSite> selected;
        try
        {
            selected = filter.Select(_allSites, _functionNames);
        }
        catch (HotwireException e) when (_relocateEntries)
        {
            throw ExplainRefused(filter, e);
        }
        List<PatchSite> unplaced = selected.Where(p => !Table.Contains(p.Address)).ToList();
        if (unplaced.Count > 0)
        {
            PlaceRelocated(unplaced);
        }
        return selected.Select(p => Table.At(p.Address)!).ToList();
    }

    void IOpsExecutor.Prepare(Ops ops, IReadOnlyList<SiteRecord> sites) => ops.Prepare(this, sites);

    void IOpsExecutor.Apply(IReadOnlyList<SiteRecord> sites, bool bases, Action<IReadOnlyList<BaseChange>>? beforeBatch)
    {
        List<BaseChange>? changes = bases ? BaseChanges(sites) : null;
        if (changes is not null)
        {
            beforeBatch?.Invoke(changes);
        }
        Apply(sites, changes);
    }

    // A site whose redirect target changed: its cached bytes and trampolines are stale.
    void IOpsExecutor.Forget(SiteRecord s)
    {
        s.DesiredCache0 = SiteRecord.NoCache;
        s.DesiredCache1 = SiteRecord.NoCache;
        s.ForgetTrampolines(static _ => true);
    }

    void IOpsExecutor.ForgetIds(ulong freed)
    {
        Trampolines.ForgetOps(freed);
        foreach (SiteRecord s in Sites)
        {
            s.ForgetTrampolines(mask => (mask & freed) != 0);
            if ((s.DesiredCache0.Mask & freed) != 0 && s.DesiredCache0.Mask != ulong.MaxValue)
            {
                s.DesiredCache0 = SiteRecord.NoCache;
            }
            if ((s.DesiredCache1.Mask & freed) != 0 && s.DesiredCache1.Mask != ulong.MaxValue)
            {
                s.DesiredCache1 = SiteRecord.NoCache;
            }
        }
    }

    /// <summary>
    /// What a site goes back to on detach or when Hotwire dies: its original NOP, or the newest
    /// live patch's jmp. The agent's restore reads it from the site table; a change of it travels
    /// with the batch that changes the site (<see cref="PokeBatch.Run"/>), so the two never disagree.
    /// Only the sites whose base changes are returned.
    /// </summary>
    private List<BaseChange> BaseChanges(IEnumerable<SiteRecord> sites)
    {
        var changes = new List<BaseChange>();
        foreach (SiteRecord s in sites)
        {
            Ops? patch = s.Ops.LastOrDefault(o => o.Persistent);
            // A relocated entry rests at its original bytes; a trap on them continues in the relocated copy.
            SiteBytes bytes = s.Original;
            ulong emu = s.Relocation is { } relocation ? Records.Jump(relocation.Relocated) : 0;
            if (patch is not null)
            {
                ulong target = patch.RedirectTarget(s);
                if (!SitePlanner.InReach(s.Address, target))
                {
                    throw new HotwireException($"{s.Function}: the replacement at 0x{target:x} is beyond a jmp's reach from 0x{s.Address:x}");
                }
                bytes = SitePlanner.Bytes(new SiteDecision(SiteShape.Jump, target, patch), s.Address, s.Length);
                emu = Records.Jump(target);
            }
            SiteBytes before = Table.Base(Shared, s);
            if (before != bytes || Table.BaseEmu(Shared, s) != emu)
            {
                changes.Add(new BaseChange(s, before, bytes, emu));
            }
        }
        return changes;
    }

    // Reused from batch to batch (50,000 sites: 1.2 MB each time otherwise).
    private readonly List<BatchEntry> _entries = [];

    private void Apply(IReadOnlyList<SiteRecord> sites, IReadOnlyList<BaseChange>? bases = null)
    {
        List<BatchEntry> entries = _entries;
        entries.Clear();
        entries.EnsureCapacity(sites.Count);
        foreach (SiteRecord s in sites)
        {
            (SiteBytes bytes, ulong emu) = CachedDesired(s);
            if (bytes != s.Current)
            {
                entries.Add(new BatchEntry(s, bytes, emu));
            }
        }
        Poke.Run(entries, bases ?? [], Sites.Count, threadsRun: !Launched);
    }

    private (SiteBytes Bytes, ulong Emu) CachedDesired(SiteRecord s)
    {
        ulong mask = s.OpsMask;
        if (s.DesiredCache0.Mask == mask)
        {
            return (s.DesiredCache0.Bytes, s.DesiredCache0.Emu);
        }
        if (s.DesiredCache1.Mask == mask)
        {
            return (s.DesiredCache1.Bytes, s.DesiredCache1.Emu);
        }
        (SiteBytes bytes, ulong emu) = Desired(s);
        s.DesiredCache1 = s.DesiredCache0;
        s.DesiredCache0 = (mask, bytes, emu);
        return (bytes, emu);
    }

    /// <summary>The bytes the site should hold for its ops (<see cref="SitePlanner"/>), and how to emulate them.</summary>
    private (SiteBytes Bytes, ulong Emu) Desired(SiteRecord s)
    {
        if (s.Relocation is { } relocation)
        {
            return DesiredRelocated(s, relocation);
        }
        SiteDecision d = SitePlanner.Decide(s.Address, s.Ops, s, static (o, site) => o.RedirectTarget(site));
        switch (d.Shape)
        {
            case SiteShape.Nop:
                return (SitePlanner.Bytes(d, s.Address, s.Length), Records.Nop(s.Length));
            case SiteShape.Jump:
                return (SitePlanner.Bytes(d, s.Address, s.Length), Records.Jump(d.JumpTarget));
            default:
                ulong trampoline = Trampolines.For(s);
                return (SitePlanner.Bytes(d, s.Address, s.Length, trampoline), Trampolines.CallRecord(trampoline));
        }
    }


    private readonly List<Action<ProcessImage>> _whenLoaded = [];
    private bool _running;

    /// <summary>
    /// Runs <paramref name="action"/> with the process's modules once its shared libraries are
    /// loaded and relocated: now when attached; for a launched program, when it reaches its entry
    /// point (the dynamic linker is done, the program's own code has not started).
    /// </summary>
    internal void WhenLibrariesLoaded(Action<ProcessImage> action)
    {
        if (!Launched || _running)
        {
            action(Image);
        }
        else
        {
            _whenLoaded.Add(action);
        }
    }

    // ---------------------------------------------------------------- detach

    /// <summary>
    /// Every site back to its original bytes (through the protocol), then — once no thread has a
    /// SIGTRAP from us still pending — the previous SIGTRAP disposition back, and the agent gone.
    /// Hotwire's memory stays mapped: a thread preempted inside a trampoline may still return through it.
    /// </summary>
    public void Detach()
    {
        StopFollowingLibraries();
        lock (_gate)
        {
            DetachLocked();
        }
    }

    private void DetachLocked()
    {
        if (_detached)
        {
            return;
        }
        try
        {
            if (_exited || !IsAlive() || Execed())
            {
                RestoredForks = RestoreForkedProcesses();
                return; // nothing else left to restore: the code went with the process or its old program
            }
            // Live patches stay: take every other ops off in one batch; then the agent's restore
            // (which goes back to each site's base: its NOP, or a live patch's jmp) finds nothing to do.
            List<Ops> transient = Registry.Registered.Where(o => !o.Persistent).ToList();
            if (transient.Count > 0 && transient.Count < Registry.Registered.Count)
            {
                Change(transient, []);
            }
            using (Threads.HoldThreadsBlockingSigtrap())
            {
                Channel.Send(L.CmdRestoreAll);
            }
            foreach (SiteRecord s in Sites.Where(s => !s.Gone))
            {
                s.Current = Table.Base(Shared, s);
                s.Ops.Clear();
            }
            // A block stays pinned (not reusable by a later Hotwire) while any tracer that pinned it
            // could not undo that.
            if (_whenRestored.Count > 0 && _whenRestored.All(unpin => unpin()))
            {
                Shared.WriteU64(L.Pinned, 0);
            }
            RestoredForks = RestoreForkedProcesses();
            // The handler goes only when no trap of ours can still arrive; otherwise it stays (as
            // after the dead-man switch): it re-executes stale traps and passes the rest on.
            Shared.WriteU64(L.ExitRestoresSigaction, NoSigtrapInFlight() ? 1UL : 0UL);
            Channel.Send(L.CmdExit);
            for (int i = 0; i < 200 && Directory.Exists($"/proc/{Pid}/task/{AgentTid}"); i++)
            {
                Thread.Sleep(5);
            }
        }
        catch (TargetExitedException)
        {
        }
        finally
        {
            foreach (int field in new[] { L.SyncCount, L.TrapsEmulated, L.TrapsStale, L.TrapsChained })
            {
                _finalStats[field] = Shared.ReadU64((ulong)field);
            }
            _detached = true;
            // The tracers' buffers need not stay resident in the target: the mapping stays (a thread
            // may still write there, a late graph exit say) but its pages go back to the system.
            Heap?.Discard();
            Shared.Dispose();
            _memory.Dispose();
            Threads?.Dispose();
        }
    }

    /// <summary>
    /// True once an attached process has executed a new program: exec ends every thread but the
    /// one that calls it, the agent among them, and replaces the code Hotwire had changed.
    /// </summary>
    public bool Execed() => (!Launched || _running) && !_detached && AgentTid > 0 && !Directory.Exists($"/proc/{Pid}/task/{AgentTid}") && IsAlive();

    /// <summary>False once the process is gone or a zombie.</summary>
    public bool IsAlive() => ProcStat.IsAlive(Pid);

    /// <summary>
    /// True once no thread has a SIGTRAP pending, seen twice 20 ms apart. Once is not enough: a
    /// thread that executed an int3 just before the last sync may still be inside the kernel's trap
    /// entry, its SIGTRAP not yet queued (the sync's IPI can be served there); a SIG_DFL restored
    /// meanwhile kills the process when it is (the waiters target died of it in 1 of 15 runs of
    /// 20 sessions). False if traps stay pending for a second (a stopped thread, say).
    /// </summary>
    private bool NoSigtrapInFlight()
    {
        int clean = 0;
        for (int i = 0; i < 50; i++)
        {
            if (!Directory.Exists($"/proc/{Pid}/task"))
            {
                return true;
            }
            bool pending = Directory.EnumerateDirectories($"/proc/{Pid}/task")
                .Any(task => ProcStatus.SignalPending(Path.Combine(task, "status"), Ptrace.SIGTRAP));
            clean = pending ? 0 : clean + 1;
            if (clean == 2)
            {
                return true;
            }
            Thread.Sleep(20);
        }
        return false;
    }

    public void Dispose()
    {
        if (!_detached)
        {
            try
            {
                Detach();
            }
            catch (HotwireException)
            {
            }
        }
    }

    /// <summary>True once detached: the shared memory is unmapped.</summary>
    internal bool IsDetached => _detached;

    private void ThrowIfDetached()
    {
        if (_detached)
        {
            throw new InvalidOperationException("the session is detached");
        }
    }
}

/// <summary>A site's base (what restore puts back) before and after a change, and how to emulate the new one.</summary>
internal readonly record struct BaseChange(SiteRecord Site, SiteBytes Before, SiteBytes After, ulong Emu);
