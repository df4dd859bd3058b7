using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

/// <summary>One site's change in a batch: the bytes it gets, and the emulation record of the instruction they make.</summary>
internal readonly record struct BatchEntry(SiteRecord Site, SiteBytes New, ulong Emu);

/// <summary>A batch entry as the agent reads it (AgentLayout.Batch*; LayoutTests checks the two agree).</summary>
[StructLayout(LayoutKind.Sequential, Size = L.BatchEntrySize)]
internal struct BatchSlot
{
    public uint SiteIndex;
    public uint Padding;
    public SiteBytes Expected;
    public SiteBytes New;
    public ulong Emu;
}

/// <summary>
/// Hotwire's side of the kernel's text_poke_bp_batch (text_poke_queue/text_poke_finish): the
/// batch list and the code ranges written to shared memory, the agent told to run them (verify,
/// int3s, sync, tails, sync, heads, sync), threads held or moved while it does, and a site someone
/// else changed reported as ftrace_bug does. The agent's half is AgentCode's run-batch routine.
/// </summary>
internal sealed class PokeBatch(int pid, ProcessMemory memory, ThreadMigration threads, List<MemoryMapping> execMappings)
{
    private int Pid => pid;

    /// <summary>The shared memory and the agent, once the block is mapped.</summary>
    public SharedHeap Heap { get; set; } = null!;

    public AgentChannel Channel { get; set; } = null!;

    private SharedRegion Shared => Heap.Shared;

    private SiteRecord[] _touched = [];   // reused from batch to batch

    private static bool IsSortedByIndex(List<BatchEntry> entries)
    {
        for (int i = 1; i < entries.Count; i++)
        {
            if (entries[i - 1].Site.Slot > entries[i].Site.Slot)
            {
                return false;
            }
        }
        return true;
    }
    /// <summary>Where the batch list is (heap offset): room for every site.</summary>
    public ulong ListOffset { get; set; }

    /// <summary>Where the list of code ranges a batch makes writable is, and how many it holds.</summary>
    public ulong RangeListOffset { get; set; }

    public int RangeCapacity { get; set; }

    /// <summary>The target's executable mappings (sites' pages are made writable within their own).</summary>
    public List<MemoryMapping> ExecMappings { get; set; } = execMappings;

    private ulong _baseListOffset;
    private int _baseListCapacity;

    /// <summary>
    /// Writes every entry's new bytes with the int3 protocol, and the base changes with them, in
    /// one command to the agent. <paramref name="baseCapacity"/>: how many base changes the list
    /// must hold at the most (the sites' count). A site that does not hold what the entry expects
    /// fails the whole batch before anything is written.
    /// </summary>
    /// <param name="threadsRun">false while a launched program has run none of its code: no thread can be inside a site</param>
    public void Run(List<BatchEntry> entries, IReadOnlyList<BaseChange> bases, int baseCapacity, bool threadsRun)
    {
        if (entries.Count == 0 && bases.Count == 0)
        {
            return;
        }
        if (bases.Count > _baseListCapacity)
        {
            _baseListCapacity = baseCapacity;
            _baseListOffset = Heap.Allocate((ulong)_baseListCapacity * L.BaseEntrySize, 8);
        }
        for (int i = 0; i < bases.Count; i++)
        {
            ulong e = _baseListOffset + (ulong)(i * L.BaseEntrySize);
            Shared.WriteU32(e + L.BaseSiteIndex, (uint)bases[i].Site.Slot);
            bases[i].After.Write(Shared, e + L.BaseBytes);
            Shared.WriteU64(e + L.BaseEmu, bases[i].Emu);
        }
        Shared.WriteU64(L.BaseList, bases.Count > 0 ? Heap.Address(_baseListOffset) : 0);
        Shared.WriteU64(L.BaseCount, (ulong)bases.Count);
        // Table slots follow addresses: sorting by slot sorts by address (usually it already is).
        if (!IsSortedByIndex(entries))
        {
            entries.Sort(static (x, y) => x.Site.Slot.CompareTo(y.Site.Slot));
        }
        // The agent reads the list after our FUTEX_WAKE (a system call: a full barrier), so plain stores do.
        Span<BatchSlot> slots = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, BatchSlot>(
            Shared.Bytes(ListOffset, entries.Count * L.BatchEntrySize));
        if (_touched.Length < entries.Count)
        {
            _touched = new SiteRecord[Math.Max(entries.Count, _touched.Length * 2)];
        }
        var touched = new ArraySegment<SiteRecord>(_touched, 0, entries.Count);
        for (int i = 0; i < entries.Count; i++)
        {
            BatchEntry e = entries[i];
            slots[i] = new BatchSlot { SiteIndex = (uint)e.Site.Slot, Expected = e.Site.Current, New = e.New, Emu = e.Emu };
            _touched[i] = e.Site;
        }
        int ranges = WriteRanges(touched, RangeListOffset, RangeCapacity);
        Shared.WriteU64(L.BatchCount, (ulong)entries.Count);
        Shared.WriteU64(L.RangeCount, (ulong)ranges);

        // A NOP sled is five instructions: a thread may sit between them. In a running process,
        // pause after the int3s are in and move any such thread past the sled (DESIGN.md §2).
        // A relocated entry's first instructions likewise: a thread between them moves to the detour's copy.
        ulong[] sleds = !threadsRun ? [] : entries.Where(e => e.Site.Site.Kind is SiteKind.NopSled or SiteKind.Relocated && !e.Site.Converted && !e.Site.Fresh)
            .Select(e => e.Site.Address).ToArray();
        Shared.WriteU64(L.PauseAfterPhase1, sleds.Length > 0 ? 1UL : 0UL);
        // A thread that blocks SIGTRAP and ran into one of the batch's int3s would be killed by the
        // kernel: such threads are held (ptrace-stopped) until the batch is done.
        using ThreadMigration.HeldThreads held = threads.HoldThreadsBlockingSigtrap();
        Channel.Send(L.CmdBatch);
        if (sleds.Length > 0)
        {
            try
            {
                if (Shared.ReadU64(L.Paused) == 1)
                {
                    if (TestSwitches.DieInSledPause)
                    {
                        Ptrace.kill(Libc.getpid(), Ptrace.SIGKILL); // Hotwire dies before moving any thread
                    }
                    threads.MoveThreadsOutOfSleds(sleds);
                }
            }
            finally
            {
                Shared.WriteU64(L.PauseAfterPhase1, 0);
                if (Shared.ReadU64(L.Paused) == 1)
                {
                    Channel.Send(L.CmdContinue);
                }
            }
        }
        int result = (int)Shared.ReadU32(L.Result);
        if (result > 0)
        {
            throw VerifyFailure(entries[result - 1].Site);
        }
        if (result < 0)
        {
            throw Errors.InTarget("making code writable (the agent's mprotect)", result, Pid, "nothing was changed");
        }
        foreach (BatchEntry e in entries)
        {
            e.Site.Current = e.New;
        }
    }

    private HotwireException VerifyFailure(SiteRecord s)
    {
        var actual = new byte[s.Length];
        memory.TryRead(s.Address, actual);
        byte[] expected = s.Current.ToArray(s.Length);
        string owner = actual[0] switch
        {
            0xcc => "a breakpoint is there: a debugger or another tool holds this function",
            0xe8 when IsUprobeCall(s.Address, actual) => "a kernel uprobe holds it (Linux 6.18+ turns a uprobe on a NOP5 into a call to [uprobes-trampoline])",
            _ => "someone else changed this code",
        };
        return new HotwireException(
            $"site of {s.Function} at 0x{s.Address:x} holds {Convert.ToHexString(actual).ToLowerInvariant()}, expected {Convert.ToHexString(expected).ToLowerInvariant()}: {owner}; nothing was changed");
    }

    private bool IsUprobeCall(ulong address, byte[] bytes)
    {
        ulong target = (ulong)((long)address + 5 + BitConverter.ToInt32(bytes, 1));
        return ProcMaps.Read(Pid).Any(m => m.Path == "[uprobes]" || m.Path == "[uprobes-trampoline]" ? target >= m.Start && target < m.End : false);
    }

    /// <summary>The pages the sites lie in, merged into runs within one mapping; <paramref name="sites"/> sorted by address.</summary>
    public int WriteRanges(IReadOnlyList<SiteRecord> sites, ulong listOffset, int capacity)
    {
        List<CodeRange> runs = CodeRanges(sites.Select(s => (s.Address, s.Length)), MappingOf);
        if (runs.Count > capacity)
        {
            throw new HotwireException($"a batch touches {runs.Count} separate code ranges, more than {capacity}; trace fewer functions at once");
        }
        for (int i = 0; i < runs.Count; i++)
        {
            ulong e = listOffset + (ulong)(i * L.RangeEntrySize);
            Shared.WriteU64(e, runs[i].Start);
            Shared.WriteU32(e + 8, (uint)(runs[i].End - runs[i].Start));
            Shared.WriteU32(e + 12, (uint)runs[i].Prot);
        }
        return runs.Count;
    }

    /// <summary>A run of pages the agent makes writable for a batch and then gives back <see cref="Prot"/>.</summary>
    public readonly record struct CodeRange(ulong Start, ulong End, int Prot);

    /// <summary>
    /// The pages <paramref name="sites"/> (sorted by address) lie in, as few runs as can be: adjacent
    /// pages merge when they are in the same mapping (<paramref name="mappingOf"/> a page) with the
    /// same protection, so one mprotect covers them and the old protection is put back exactly.
    /// </summary>
    public static List<CodeRange> CodeRanges(IEnumerable<(ulong Address, int Length)> sites, Func<ulong, MemoryMapping> mappingOf)
    {
        var runs = new List<CodeRange>();
        MemoryMapping vma = default;
        foreach ((ulong address, int length) in sites)
        {
            ulong first = address & ~0xfffUL;
            ulong last = (address + (ulong)length - 1) & ~0xfffUL;
            for (ulong page = first; page <= last; page += 0x1000)
            {
                if (runs.Count > 0 && page < runs[^1].End)
                {
                    continue;
                }
                if (page < vma.Start || page >= vma.End)
                {
                    vma = mappingOf(page);
                }
                int prot = vma.Protection;
                if (runs.Count > 0 && runs[^1].End == page && runs[^1].Prot == prot && page > vma.Start)
                {
                    runs[^1] = runs[^1] with { End = page + 0x1000 };
                }
                else if (runs.Count == 0 || runs[^1].End <= page)
                {
                    runs.Add(new CodeRange(page, page + 0x1000, prot));
                }
            }
        }
        return runs;
    }

    private MemoryMapping MappingOf(ulong page)
    {
        foreach (MemoryMapping m in ExecMappings)
        {
            if (page >= m.Start && page < m.End)
            {
                return m;
            }
        }
        throw new HotwireException($"code at 0x{page:x} in pid {Pid} is no longer mapped (was its library unloaded?)");
    }
}
