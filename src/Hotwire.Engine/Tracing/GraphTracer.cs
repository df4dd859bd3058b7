using Hotwire.Patching;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Tracing;

/// <summary>What the graph tracer does at each exit.</summary>
public enum GraphMode
{
    /// <summary>function_graph: an entry and an exit event per call, streamed like the function tracer's.</summary>
    Events,

    /// <summary>profile: per-thread, per-function calls and times kept in shared memory; no events.</summary>
    Profile,
}

/// <summary>Options of the function_graph and profile tracers.</summary>
public sealed record GraphOptions(GraphMode Mode = GraphMode.Events, int MaxDepth = 0, bool Retval = false);

/// <summary>
/// The function_graph tracer and the profiler. At a traced function's entry the site's trampoline
/// calls one shared entry routine which pushes {real return address, its stack slot, site, rdtsc}
/// on the thread's shadow stack and points the return slot at a return handler; the handler pops
/// the entry, records the exit and jumps to the real return address. (Layout and the reasoning for
/// longjmp, signals, fork and exceptions: docs/graph.md.)
/// <para>
/// Shadow stacks live in private anonymous memory of the target, not in the shared memfd: after
/// fork the child gets its own copy of the stacks its frames need, and its returns still go home.
/// </para>
/// </summary>
public sealed class GraphTracer : RingTracer
{
    // Shadow stack record of one thread: a header, then entries of 64 bytes.
    internal const int RecordShift = 20;                 // 1 MiB per thread
    internal const int HDepth = 0;                       // u64: entries in use
    internal const int HOwner = 8;                       // u64: the thread pointer (fs:0) of the owner
    internal const int HSink = 16;                       // u64: this thread's ring buffer (graph) or profile row
    internal const int HBusy = 24;                       // u8: inside our own code (a signal handler must not nest in)
    internal const int HGrave = 32;                      // u64: entries ever buried (the graveyard ring's head)
    internal const int EntryShift = 6;
    internal const int ERet = 0, ESlot = 8, ETsc = 16, ESite = 24, EChild = 32;

    // The graveyard: the last 16 KiB of a record, a ring of copies of the entries most recently
    // dropped as gone, with their depth (EDepth). A frame judged gone by its address may be alive
    // on another stack (a coroutine's, swapcontext): when it returns, the handler finds it there
    // and records its exit as for any other frame.
    internal const int GraveEntries = 256;
    internal const int EDepth = 40;
    internal const int GraveOffset = (1 << RecordShift) - (GraveEntries << EntryShift);

    /// <summary>Frames a thread's shadow stack holds; deeper calls are counted as overflow and not followed.</summary>
    public const int Capacity = (GraveOffset >> EntryShift) - 1;

    /// <summary>Where a function_graph event's arguments start.</summary>
    private static int ArgsAt => EventLayout.ArgsAt(EventLayout.GraphFields);

    /// <summary>An entry older than this far above a new frame is on another stack (a signal stack), not stale.</summary>
    internal const long SameStackWindow = 1 << 20;

    // Profile row cell per (thread, function): calls, total ticks, self ticks, max ticks, ~min ticks,
    // then a histogram of the calls' durations: u32 counts of log2 buckets, bucket k holding the
    // calls of 2^k to 2^(k+1) − 1 ticks (bucket 0 also 0 ticks, the last one everything longer).
    // u32 counts wrap after 4 G calls of one function in one bucket of one thread: a reader that
    // looks more often than that (ProfileMonitor, every second) takes differences modulo 2^32.
    internal const int CellShift = 8;
    internal const int CCalls = 0, CTotal = 8, CSelf = 16, CMax = 24, CMinInv = 32, CHistogram = 64;

    /// <summary>Duration buckets per (thread, function) cell: log2 of the call's TSC ticks, 0 to 47 (2^47 ticks is over 10 hours).</summary>
    public const int HistogramBuckets = ((1 << CellShift) - CHistogram) / 4;

    private readonly Dictionary<int, int> _local = [];
    private ulong _private;         // target address of the private mapping
    private ulong _rowsOffset;      // profile rows (shared)
    private ulong _entryRoutine;

    public GraphTracer(TraceBufferOptions buffers, GraphOptions options, IEnumerable<string>? filter = null, IEnumerable<string>? notrace = null)
        : base(options.Mode == GraphMode.Profile ? "profile" : "function_graph",
               options.Mode == GraphMode.Profile ? buffers with { BufferBytes = 4096, Info = true } : buffers with { Info = true },
               filter, notrace)
    {
        if (options.MaxDepth < 0)
        {
            throw new HotwireException($"--depth must be at least 1, not {options.MaxDepth}");
        }
        Options = options;
    }

    public GraphOptions Options { get; }

    public override string TracerName => Options.Mode == GraphMode.Profile ? Tracers.Profile : Tracers.FunctionGraph;

    /// <summary>Address of the return handler in the target (tests look for it on stacks).</summary>
    public ulong ReturnHandler { get; private set; }

    /// <summary>Shared memory the tracer needs: a fixed part, and a part per patch site (the profiler's rows).</summary>
    public static (ulong Fixed, ulong PerSite) SharedBytes(TraceBufferOptions buffers, GraphOptions options) => options.Mode == GraphMode.Profile
        ? ((ulong)buffers.MaxThreads * 4096 + (ulong)(TraceBufferOptions.PidMax() + 1) * 4 + 3 * 4096 + 4096, (ulong)buffers.MaxThreads << CellShift)
        : (TraceBufferOptions.SharedBytes(buffers with { Info = true }), 0);

    private ulong RecordsNext => _private;                            // u32 claim counter
    private ulong Table => _private + 4096;                           // tid → record + 1
    private TidTable Tids => new(_tidOffset, _pidMax, Table);
    private ulong Records => _private + RecordsStart;
    private ulong RecordsStart => ((4096 + (ulong)(_pidMax + 1) * 4) + (1UL << RecordShift) - 1) & ~((1UL << RecordShift) - 1);
    private ulong PrivateBytes => RecordsStart + ((ulong)Buffers.MaxThreads << RecordShift);
    private ulong RowStride => (ulong)Math.Max(_local.Count, 1) << CellShift;

    private protected override void PrepareMore(IOpsHost session)
    {
        // The shadow stacks: private, lazily backed (MAP_NORESERVE), never unmapped.
        long at = Errors.CheckInTarget(session.Channel.Syscall(SyscallNumbers.mmap, 0, PrivateBytes, Sys.PROT_READ | Sys.PROT_WRITE,
            Sys.MAP_PRIVATE | Sys.MAP_ANONYMOUS | Sys.MAP_NORESERVE, ulong.MaxValue, 0), $"mapping {PrivateBytes >> 20} MiB for shadow stacks", session.Pid);
        _private = (ulong)at;
        session.DescribeShadowStacks(_private, PrivateBytes, Records);
        session.WhenRestored(() => UnhookIfNoFrames(session));
        foreach (SiteRecord s in session.Sites)
        {
            _local[s.Index] = _local.Count;
        }
        if (Options.Mode == GraphMode.Profile)
        {
            _rowsOffset = session.Heap.Allocate((ulong)Buffers.MaxThreads * RowStride, 4096);
            session.Heap.DiscardOnDetach(_rowsOffset, (ulong)Buffers.MaxThreads * RowStride);
        }
        ReturnHandler = session.PlaceCode(EmitReturnHandler);
        _entryRoutine = session.PlaceCode(EmitEntryRoutine);
        foreach (string name in s_beforeUnwind.Concat(s_afterCatch))
        {
            ulong cell = session.Heap.Allocate(8, 8);
            bool catching = s_afterCatch.Contains(name);
            _hooks[name] = (session.PlaceCode(at => EmitUnwindHook(at, session.Heap.Address(cell), catching)), cell);
        }
        session.WhenLibrariesLoaded(InstallUnwindHooks);
        session.WhenModulesRelocated(InstallUnwindHooks);
    }

    /// <summary>
    /// At detach, once no call can enter a traced function: when no thread has a frame left to
    /// return through the handler (every shadow stack empty; frames drain within a short wait,
    /// a thread blocked inside a traced call does not), the GOT slots go back to the unwinder and
    /// the block is unpinned. The shadow stacks stay: a thread may still be inside the entry
    /// routine; a later Hotwire checks them again, after it has seen no thread in the block's
    /// code, and unmaps them when it takes the block over.
    /// </summary>
    private bool UnhookIfNoFrames(IOpsHost session)
    {
        if (_hooked.Count == 0)
        {
            return true;
        }
        for (int wait = 0; wait < 20; wait++)
        {
            if (ShadowStacksEmpty(session.ReadTarget, _private, Records, Buffers.MaxThreads) is not bool empty)
            {
                return false;
            }
            if (empty)
            {
                foreach ((ulong slot, ulong real) in _hooked)
                {
                    try
                    {
                        session.Channel.StoreWord(slot, real);  // the unwinder is called directly again
                    }
                    catch (HotwireException) when (!session.IsMapped(slot))
                    {
                        // its library was unloaded since
                    }
                }
                return true;
            }
            Thread.Sleep(5);
        }
        return false;
    }

    /// <summary>
    /// True when no shadow stack holds a frame (none in use, none buried: a buried frame may be a
    /// coroutine's, still to come back); null when they cannot be read.
    /// </summary>
    internal static bool? ShadowStacksEmpty(ReadTarget read, ulong map, ulong records, int maxRecords)
    {
        Span<byte> word = stackalloc byte[8];
        if (!read(map, word))   // RecordsNext: u32 claim counter
        {
            return null;
        }
        uint count = Math.Min(BitConverter.ToUInt32(word), (uint)maxRecords);
        for (uint i = 0; i < count; i++)
        {
            ulong record = records + ((ulong)i << RecordShift);
            if (!read(record + HDepth, word) || BitConverter.ToUInt64(word) != 0 || !read(record + HGrave, word) || BitConverter.ToUInt64(word) != 0)
            {
                return false;
            }
        }
        return true;
    }

    internal delegate bool ReadTarget(ulong address, Span<byte> into);

    // ---- C++ exceptions. The unwinder walks return addresses; where one is our handler it finds
    // no unwind information and the exception ends in std::terminate (uftrace's old crash). So
    // before any unwinding starts, every live hijacked slot of the thread gets its real return
    // address back; when a handler catches (__cxa_begin_catch), the frames that were unwound are
    // dropped from the shadow stack and the live ones are hijacked again. Both are hooked at the
    // GOT slots through which every module calls them: an aligned 8-byte store, no code patching.
    private static readonly string[] s_beforeUnwind = ["_Unwind_RaiseException", "_Unwind_Resume", "_Unwind_Resume_or_Rethrow", "_Unwind_ForcedUnwind"];
    private static readonly string[] s_afterCatch = ["__cxa_begin_catch"];
    private readonly Dictionary<string, (ulong Wrapper, ulong Cell)> _hooks = []; // Cell: offset of the real address

    private readonly List<(ulong Slot, ulong Real)> _hooked = [];

    /// <summary>GOT slots pointed at the unwinding hooks so far.</summary>
    public int UnwindHooks { get; private set; }

    private void InstallUnwindHooks(Procfs.ProcessImage image) => InstallUnwindHooks(image.Modules);

    // Where each hooked function really is, from the modules seen so far (a C++ runtime may come with a later dlopen).
    private readonly Dictionary<string, ulong> _real = [];

    private void InstallUnwindHooks(IReadOnlyList<Procfs.LoadedModule> modules)
    {
        var names = new HashSet<string>(_hooks.Keys, StringComparer.Ordinal);
        var real = _real;
        foreach (Procfs.LoadedModule m in modules)
        {
            foreach (Elf.ElfSymbol sym in m.Elf.ReadSymbols(dynamic: true))
            {
                if (names.Contains(sym.Name) && sym.SectionIndex != 0 && sym.Value != 0 && !real.ContainsKey(sym.Name)
                    && sym.Binding is Elf.ElfFile.STB_GLOBAL or Elf.ElfFile.STB_WEAK)
                {
                    real[sym.Name] = m.Bias + sym.Value;
                }
            }
        }
        foreach ((string name, ulong address) in real)
        {
            Heap.Shared.WriteU64(_hooks[name].Cell, address);
        }
        foreach (Procfs.LoadedModule m in modules)
        {
            foreach ((ulong slot, string name) in m.Elf.ImportSlots(names))
            {
                if (real.ContainsKey(name))
                {
                    Session.PinBlock();   // until detach puts the slot back
                    Session.Channel.StoreWord(slot + m.Bias, _hooks[name].Wrapper);
                    _hooked.Add((slot + m.Bias, real[name]));
                    UnwindHooks++;
                }
            }
        }
    }

    private byte[] EmitUnwindHook(ulong at, ulong cell, bool catching)
    {
        var a = new Assembler(64);
        Label done = a.CreateLabel(), loop = a.CreateLabel(), next = a.CreateLabel(), end = a.CreateLabel(),
            dead = a.CreateLabel(), live = a.CreateLabel();
        a.push(rax);
        a.push(rcx);
        a.push(rdx);
        a.push(rsi);
        a.push(rdi);
        EmitFindRecord(a, done);
        a.mov(rax, __qword_ptr.fs[0]);
        a.cmp(rax, __qword_ptr[r11 + HOwner]);
        a.jne(done);
        a.mov(__byte_ptr[r11 + HBusy], (byte)1);
        a.lea(rsi, __[rsp + 40]);                       // our own return slot: live frames' slots are above it
        a.mov(rcx, __qword_ptr[r11 + HDepth]);
        if (catching)
        {
            // Frames the exception unwound are below the catching frame: drop them.
            a.Label(ref dead);
            a.test(rcx, rcx);
            a.jz(live);
            a.mov(rax, rcx);
            a.shl(rax, EntryShift);
            a.cmp(__qword_ptr[r11 + rax + ESlot], rsi);
            a.ja(live);
            a.dec(rcx);
            a.jmp(dead);
            a.Label(ref live);
            a.mov(__qword_ptr[r11 + HDepth], rcx);
        }
        a.Label(ref loop);
        a.test(rcx, rcx);
        a.jz(end);
        a.mov(rax, rcx);
        a.shl(rax, EntryShift);
        a.add(rax, r11);                                // entry rcx - 1
        a.mov(rdx, __qword_ptr[rax + ESlot]);
        a.cmp(rdx, rsi);
        a.jbe(next);                                    // not a live frame of this stack
        if (catching)
        {
            a.mov(rdi, __qword_ptr[rax + ERet]);        // restored before unwinding: hijack again
            a.cmp(__qword_ptr[rdx], rdi);
            a.jne(next);
            a.mov(rdi, ReturnHandler);
            a.mov(__qword_ptr[rdx], rdi);
        }
        else
        {
            a.mov(rdi, ReturnHandler);                  // hijacked: give the unwinder the real address
            a.cmp(__qword_ptr[rdx], rdi);
            a.jne(next);
            a.mov(rdi, __qword_ptr[rax + ERet]);
            a.mov(__qword_ptr[rdx], rdi);
        }
        a.Label(ref next);
        a.dec(rcx);
        a.jmp(loop);
        a.Label(ref end);
        a.mov(__byte_ptr[r11 + HBusy], (byte)0);
        a.Label(ref done);
        a.pop(rdi);
        a.pop(rsi);
        a.pop(rdx);
        a.pop(rcx);
        a.pop(rax);
        a.mov(r11, cell);
        a.jmp(__qword_ptr[r11]);
        return Assemble(a, at);
    }

    internal override int ParameterCount => 1;

    // The profiler's cells are laid out for the sites of the moment it starts.
    internal override bool TakesLateSites => Options.Mode != GraphMode.Profile;

    internal override ulong Parameter(SiteRecord site, int index) => Options.Mode == GraphMode.Profile ? (ulong)_local[site.Index] : (ulong)site.Index;

    /// <summary>In the trampoline: r11 = the site (r11 saved for the caller: Preserved), then the shared entry routine (kept out of line: it is long).</summary>
    internal override void EmitEntry(Assembler a, ReadOnlySpan<ulong> parameters)
    {
        Label routine = a.CreateLabel(), over = a.CreateLabel();
        a.push(r11);
        a.mov(r11, parameters[0]);
        a.call(__qword_ptr[routine]);
        Preserved.Restore(a, r11);
        a.jmp(over);
        a.Label(ref routine);
        a.dq(_entryRoutine);
        a.Label(ref over);
    }

    private ulong Data(ulong offset) => Heap.Address(offset);

    private static byte[] Assemble(Assembler a, ulong at)
    {
        var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), at);
        return stream.ToArray();
    }

    /// <summary>r11 = this thread's record, or jump to <paramref name="none"/>. Uses rax.</summary>
    private void EmitFindRecord(Assembler a, Label none)
    {
        Tids.EmitLookup(a, none, none);
        EmitRecordAt(a, r11, rax, rax);
    }

    /// <summary><paramref name="count"/> = records claimed in this process (at most MaxThreads).</summary>
    private void EmitRecordsInUse(Assembler a, AssemblerRegister32 count, AssemblerRegister64 count64, AssemblerRegister32 temp)
    {
        a.mov(count64, RecordsNext);
        a.mov(count, __dword_ptr[count64]);
        a.mov(temp, Buffers.MaxThreads);
        a.cmp(count, temp);
        a.cmova(count, temp);
    }

    /// <summary><paramref name="record"/> = the record of index <paramref name="indexPlusOne"/> − 1 (as the tid table holds it); uses <paramref name="scratch"/>.</summary>
    private void EmitRecordAt(Assembler a, AssemblerRegister64 record, AssemblerRegister64 indexPlusOne, AssemblerRegister64 scratch)
    {
        a.mov(scratch, indexPlusOne);
        a.shl(scratch, RecordShift);
        a.mov(record, Records - (1UL << RecordShift));
        a.add(record, scratch);
    }

    /// <summary>Copies <paramref name="entry"/> of <paramref name="record"/> (and its depth) into the record's graveyard ring.</summary>
    private static void EmitBury(Assembler a, AssemblerRegister64 record, AssemblerRegister64 entry, AssemblerRegister64 t1, AssemblerRegister64 t2)
    {
        a.mov(t1, __qword_ptr[record + HGrave]);
        a.inc(__qword_ptr[record + HGrave]);
        a.and(t1, GraveEntries - 1);
        a.shl(t1, EntryShift);
        a.add(t1, record);
        foreach (int field in (int[])[ERet, ESlot, ETsc, ESite, EChild])
        {
            a.mov(t2, __qword_ptr[entry + field]);
            a.mov(__qword_ptr[t1 + GraveOffset + field], t2);
        }
        a.mov(t2, entry);
        a.sub(t2, record);
        a.shr(t2, EntryShift);
        a.dec(t2);                                      // entry i (from 1) is at depth i - 1
        a.mov(__qword_ptr[t1 + GraveOffset + EDepth], t2);
    }

    // At entry: [rsp] = back to the trampoline, [rsp+8] = the caller's r11 (the trampoline restores
    // it), [rsp+16] = back to the function (site + 5), [rsp+24] = the caller's return address (the
    // slot we take over); r11 = the site parameter. Every other register is preserved (flags aside).
    private byte[] EmitEntryRoutine(ulong at)
    {
        var a = new Assembler(64);
        bool events = Options.Mode == GraphMode.Events;
        const int SlotAt = 24 + 5 * 8;
        Label claim = a.CreateLabel(), ready = a.CreateLabel(), owned = a.CreateLabel(), reown = a.CreateLabel(),
            discard = a.CreateLabel(), push = a.CreateLabel(), overflow = a.CreateLabel(), unbusy = a.CreateLabel(),
            restore = a.CreateLabel(), nested = a.CreateLabel(), noRecord = a.CreateLabel(), noSink = a.CreateLabel(),
            claimed = a.CreateLabel(), full = a.CreateLabel(), noEvent = a.CreateLabel(), farOrStale = a.CreateLabel(), drop = a.CreateLabel(),
            mark = a.CreateLabel(), publish = a.CreateLabel();

        a.push(rax);
        a.push(rdx);
        a.push(rcx);
        a.push(rsi);
        a.push(rdi);                                    // [rsp] rdi, +8 rsi, +16 rcx, +24 rdx, +32 rax
        a.mov(rdi, r11);                                // the site
        Tids.EmitLookup(a, noRecord, claim);
        a.Label(ref ready);                             // eax = record index + 1
        EmitRecordAt(a, r11, rax, rax);
        a.mov(rax, __qword_ptr.fs[0]);
        a.cmp(rax, __qword_ptr[r11 + HOwner]);
        a.jne(reown);
        a.Label(ref owned);
        a.cmp(__byte_ptr[r11 + HBusy], 0);
        a.jne(nested);
        a.mov(__byte_ptr[r11 + HBusy], (byte)1);
        a.lea(rsi, __[rsp + SlotAt]);                   // the slot
        a.mov(rcx, __qword_ptr[r11 + HDepth]);
        // Entries whose slot is at or below the new one are frames that are gone (longjmp, an
        // exception, a thread that died with frames): drop them. Far away means another stack.
        a.Label(ref discard);
        a.test(rcx, rcx);
        a.jz(push);
        a.mov(rax, rcx);
        a.shl(rax, EntryShift);
        a.mov(rdx, rsi);
        a.sub(rdx, __qword_ptr[r11 + rax + ESlot]);
        a.jb(push);                                     // above us: an ancestor
        a.jnz(farOrStale);
        // The same slot, still holding our handler: the function was reached by a tail call
        // (jmp) from a hijacked one, which is alive and will return through that slot after it.
        a.mov(rdx, ReturnHandler);
        a.cmp(__qword_ptr[rsi], rdx);
        a.je(push);
        a.jmp(drop);
        a.Label(ref farOrStale);
        a.cmp(rdx, (int)SameStackWindow);
        a.jae(push);
        a.Label(ref drop);
        a.push(r8);
        a.push(r9);
        a.lea(r8, __[r11 + rax]);
        EmitBury(a, r11, r8, r9, rdx);
        a.pop(r9);
        a.pop(r8);
        a.dec(rcx);
        a.jmp(discard);
        a.Label(ref push);
        a.mov(__qword_ptr[r11 + HDepth], rcx);
        if (Options.MaxDepth > 0)
        {
            a.cmp(rcx, Options.MaxDepth);
            a.jae(unbusy);                              // deeper than --depth: not traced, not followed
        }
        a.cmp(rcx, Capacity);
        a.jae(overflow);
        a.lea(rax, __[rcx + 1]);
        a.shl(rax, EntryShift);
        a.add(rax, r11);                                // the new entry
        a.mov(rdx, __qword_ptr[rsi]);
        a.mov(__qword_ptr[rax + ERet], rdx);
        a.mov(__qword_ptr[rax + ESlot], rsi);
        a.mov(__qword_ptr[rax + ESite], rdi);
        a.mov(__qword_ptr[rax + EChild], 0);
        a.mov(rdi, rax);
        a.inc(rcx);
        a.mov(__qword_ptr[r11 + HDepth], rcx);          // the entry is complete before it counts
        a.mov(rdx, ReturnHandler);
        a.mov(__qword_ptr[rsi], rdx);                   // the function now returns to our handler
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(__qword_ptr[rdi + ETsc], rax);
        if (events)
        {
            int data = TraceBufferOptions.HeaderBytes;
            a.mov(rsi, __qword_ptr[r11 + HSink]);
            a.test(rsi, rsi);
            a.jz(unbusy);
            EmitReserve(a, rsi, rdx, rcx, full);
            a.and(edx, (int)(Buffers.Capacity - 1));
            a.imul(rdx, rdx, Buffers.EventBytes);
            a.add(rdx, rsi);
            a.mov(__qword_ptr[rdx + data + EventLayout.Tsc], rax);                 // tsc
            a.mov(rcx, __qword_ptr[rdi + ERet]);
            a.mov(__qword_ptr[rdx + data + EventLayout.Value], rcx);             // the caller
            a.mov(rcx, __qword_ptr[rdi + ESite]);
            a.mov(__qword_ptr[rdx + data + EventLayout.Site], rcx);            // the site
            a.mov(rcx, rdi);
            a.sub(rcx, r11);
            a.shr(rcx, EntryShift);
            a.dec(rcx);
            a.shl(rcx, 2);                                       // depth × 4 + entry (0)
            a.mov(__qword_ptr[rdx + data + EventLayout.Info], rcx);
            a.mov(rcx, __qword_ptr[rdi + ESlot]);
            a.mov(__qword_ptr[rdx + data + EventLayout.Slot], rcx);            // the slot: which stack, which frame
            for (int i = 0; i < Buffers.Args; i++)
            {
                int to = data + ArgsAt + 8 * i;
                switch (i)
                {
                    case 0: a.mov(rcx, __qword_ptr[rsp]); break;        // saved rdi
                    case 1: a.mov(rcx, __qword_ptr[rsp + 8]); break;    // saved rsi
                    case 2: a.mov(rcx, __qword_ptr[rsp + 24]); break;   // saved rdx
                    case 3: a.mov(rcx, __qword_ptr[rsp + 16]); break;   // saved rcx
                    case 4: a.mov(rcx, r8); break;
                    default: a.mov(rcx, r9); break;
                }
                a.mov(__qword_ptr[rdx + to], rcx);
            }
            EmitLossCheck(a, rsi, rax, mark);
            a.Label(ref publish);
            a.inc(__qword_ptr[rsi + TraceBufferOptions.Head]);   // publish
        }
        a.Label(ref unbusy);
        a.mov(__byte_ptr[r11 + HBusy], (byte)0);
        a.Label(ref restore);
        a.pop(rdi);
        a.pop(rsi);
        a.pop(rcx);
        a.pop(rdx);
        a.pop(rax);
        a.ret();

        if (events)
        {
            a.Label(ref full);
            a.inc(__qword_ptr[rsi + TraceBufferOptions.Lost]);
            a.jmp(unbusy);
            EmitLossMark(a, mark, rsi, __qword_ptr[rdx + TraceBufferOptions.HeaderBytes + 24], rax, rcx, publish); // info's high half
        }
        a.Label(ref overflow);                          // shadow stack full: count, do not follow this call
        a.mov(rsi, __qword_ptr[r11 + HSink]);
        a.test(rsi, rsi);
        a.jz(noEvent);
        EmitHeaderOf(a, rsi);
        a.inc(__qword_ptr[rsi + TraceBufferOptions.Overflow]);
        a.Label(ref noEvent);
        a.jmp(unbusy);

        a.Label(ref nested);                            // a signal handler interrupted our own code: skip, count
        a.mov(rsi, __qword_ptr[r11 + HSink]);
        a.test(rsi, rsi);
        a.jz(restore);
        EmitHeaderOf(a, rsi);
        a.inc(__qword_ptr[rsi + TraceBufferOptions.Lost]);
        a.jmp(restore);

        a.Label(ref reown);                             // a new thread with a dead thread's tid: start afresh
        a.mov(__qword_ptr[r11 + HOwner], rax);
        a.mov(__qword_ptr[r11 + HDepth], 0);
        a.mov(__byte_ptr[r11 + HBusy], (byte)0);
        a.jmp(owned);

        a.Label(ref claim);                             // the thread's first traced call in this process
        // A fork child's thread has the forking thread's thread pointer, and its copy of that
        // thread's record holds the frames it will return through: adopt it (with its own buffer).
        Label scan = a.CreateLabel(), fresh = a.CreateLabel(), adopt = a.CreateLabel(), haveRecord = a.CreateLabel();
        a.mov(rax, __qword_ptr.fs[0]);
        EmitRecordsInUse(a, ecx, rcx, edx);
        a.Label(ref scan);
        a.test(ecx, ecx);
        a.jz(fresh);
        EmitRecordAt(a, r11, rcx, rdx);
        a.cmp(__qword_ptr[r11 + HOwner], rax);
        a.je(adopt);
        a.dec(ecx);
        a.jmp(scan);
        a.Label(ref adopt);
        a.mov(eax, ecx);                                // index + 1
        a.mov(__byte_ptr[r11 + HBusy], (byte)0);
        a.jmp(haveRecord);
        a.Label(ref fresh);
        a.mov(r11, RecordsNext);
        a.mov(eax, 1);
        a.@lock.xadd(__dword_ptr[r11], eax);
        a.cmp(eax, Buffers.MaxThreads);
        a.jae(noRecord);
        a.inc(eax);
        EmitRecordAt(a, r11, rax, rdx);                 // the new record (zero: fresh memory)
        a.mov(rdx, __qword_ptr.fs[0]);
        a.mov(__qword_ptr[r11 + HOwner], rdx);
        a.Label(ref haveRecord);                        // eax = index + 1, r11 = the record
        Tids.EmitClaim(a, eax, rcx);
        a.push(rax);
        a.mov(rcx, Data(_nextOffset));                  // and a ring buffer (or profile row) in shared memory
        a.mov(eax, 1);
        a.@lock.xadd(__dword_ptr[rcx], eax);
        a.cmp(eax, Buffers.MaxThreads);
        a.jae(noSink);
        a.mov(ecx, eax);
        a.shl(rax, (byte)System.Numerics.BitOperations.Log2((uint)Buffers.BufferBytes));
        a.mov(rsi, Data(_buffersOffset));
        a.add(rax, rsi);
        a.mov(__dword_ptr[rax + TraceBufferOptions.Tid], edx);
        if (events)
        {
            a.mov(__qword_ptr[r11 + HSink], rax);
        }
        else
        {
            a.imul(rcx, rcx, checked((int)RowStride));
            a.mov(rsi, Data(_rowsOffset));
            a.add(rcx, rsi);
            a.mov(__qword_ptr[r11 + HSink], rcx);
        }
        a.jmp(claimed);
        a.Label(ref noSink);                            // more threads than buffers: followed, not recorded
        a.mov(rcx, Data(_nextOffset));
        a.@lock.inc(__qword_ptr[rcx + 8]);
        a.Label(ref claimed);
        a.pop(rax);
        a.jmp(ready);

        a.Label(ref noRecord);
        a.mov(r11, Data(_nextOffset));
        a.@lock.inc(__qword_ptr[r11 + 8]);
        a.jmp(restore);
        return Assemble(a, at);
    }

    /// <summary>For the profiler the sink is a row, not a buffer: turn it into the thread's buffer header.</summary>
    private void EmitHeaderOf(Assembler a, AssemblerRegister64 sink)
    {
        if (Options.Mode == GraphMode.Profile)
        {
            // row = rows + i × stride  →  header = buffers + i × 4096
            a.push(rax);
            a.push(rdx);
            a.mov(rax, sink);
            a.mov(rdx, Data(_rowsOffset));
            a.sub(rax, rdx);
            a.xor(edx, edx);
            a.mov(sink, RowStride);
            a.div(sink);
            a.shl(rax, 12);
            a.mov(sink, Data(_buffersOffset));
            a.add(sink, rax);
            a.pop(rdx);
            a.pop(rax);
        }
    }

    // Reached by `ret` from a traced function: rsp = its slot + 8, rax:rdx (and xmm0/1) hold the
    // return value. Every register is preserved, flags aside: the ABI frees rcx, rsi, rdi and
    // r8–r11 at a return, but a caller compiled with -fipa-ra may keep values in those the function
    // does not touch (Preserved). The real return address goes into the slot, and a jmp through it ends.
    // Frame, from rsp up: rdx, rax, r11, r10, r9, r8, rdi, rsi, rcx, the slot.
    private const int ExitSavedBytes = 72;
    private byte[] EmitReturnHandler(ulong at)
    {
        var a = new Assembler(64);
        Label search = a.CreateLabel(), found = a.CreateLabel(), slow = a.CreateLabel(), back = a.CreateLabel(), exit = a.CreateLabel(),
            records = a.CreateLabel(), entries = a.CreateLabel(), nextRecord = a.CreateLabel(), found2 = a.CreateLabel(), lost = a.CreateLabel(),
            buryAbove = a.CreateLabel(), buried = a.CreateLabel(), graves = a.CreateLabel(), grave = a.CreateLabel(),
            nextGraves = a.CreateLabel(), inGrave = a.CreateLabel(), nowhere = a.CreateLabel();

        // All below the caller's rsp: its frame has no live data there.
        a.lea(rsp, __[rsp - 8]);                        // the slot the function returned through
        a.push(rcx);
        a.push(rsi);
        a.push(rdi);
        a.push(r8);
        a.push(r9);
        a.push(r10);
        a.push(r11);
        a.lea(rsi, __[rsp + 56]);                       // the slot
        a.push(rax);
        a.push(rdx);                                    // from here on the slot is rsp + ExitSavedBytes, the saved rax rsp + 8
        EmitFindRecord(a, slow);
        a.mov(rcx, __qword_ptr[r11 + HDepth]);
        a.Label(ref search);                            // from the top: ours, or newer entries whose frames are gone
        a.test(rcx, rcx);
        a.jz(slow);
        a.mov(rax, rcx);
        a.shl(rax, EntryShift);
        a.mov(rdi, __qword_ptr[r11 + rax + ESlot]);
        a.cmp(rdi, rsi);
        a.je(found);
        a.ja(slow);                                     // an ancestor: ours is not in this record
        a.lea(r8, __[r11 + rax]);                       // dropped with ours: kept in the graveyard
        EmitBury(a, r11, r8, r9, r10);
        a.dec(rcx);
        a.jmp(search);
        a.Label(ref found);
        a.lea(rdi, __[r11 + rax]);
        a.dec(rcx);
        a.mov(__qword_ptr[r11 + HDepth], rcx);          // popped (with any newer, dead entries)
        a.mov(r10, __qword_ptr[rdi + ERet]);
        EmitRecordExit(a, back, exit, parentBelow: true);
        a.Label(ref back);
        a.pop(rdx);
        a.pop(rax);
        a.Label(ref exit);                              // r10 = where the function returns to
        a.mov(__qword_ptr[rsp + ExitSavedBytes - 16], r10);
        Preserved.Restore(a, r11);
        Preserved.Restore(a, r10);
        Preserved.Restore(a, r9);
        Preserved.Restore(a, r8);
        Preserved.Restore(a, rdi);
        Preserved.Restore(a, rsi);
        Preserved.Restore(a, rcx);
        // An indirect jmp, not `ret`: the return stack buffer would mispredict a ret here (the
        // function's own ret came here instead), while the branch target buffer predicts a jmp.
        // [rsp - 8] is below the caller's rsp but above where a signal frame would go (the red zone).
        a.lea(rsp, __[rsp + 8]);
        a.jmp(__qword_ptr[rsp - 8]);

        // Not in the thread's own record: a fork child returning through a frame its parent
        // entered (its copy of the parent thread's record has it), or a record reset under it.
        // Search every record; this path is rare and never records an event.
        a.Label(ref slow);
        EmitRecordsInUse(a, r11d, r11, eax);
        a.Label(ref records);
        a.test(r11, r11);
        a.jz(lost);
        EmitRecordAt(a, rdi, r11, rax);                 // record r11 - 1
        a.mov(rcx, __qword_ptr[rdi + HDepth]);
        a.Label(ref entries);
        a.test(rcx, rcx);
        a.jz(nextRecord);
        a.mov(rax, rcx);
        a.shl(rax, EntryShift);
        a.cmp(__qword_ptr[rdi + rax + ESlot], rsi);
        a.je(found2);
        a.dec(rcx);
        a.jmp(entries);
        a.Label(ref nextRecord);
        a.dec(r11);
        a.jmp(records);
        a.Label(ref found2);
        a.mov(r10, __qword_ptr[rdi + rax + ERet]);
        a.mov(r8, __qword_ptr[rdi + HDepth]);           // the entries above ours go to the graveyard
        a.Label(ref buryAbove);
        a.cmp(r8, rcx);
        a.jbe(buried);
        a.mov(r9, r8);
        a.shl(r9, EntryShift);
        a.add(r9, rdi);
        EmitBury(a, rdi, r9, r11, rax);
        a.dec(r8);
        a.jmp(buryAbove);
        a.Label(ref buried);
        a.dec(rcx);
        a.mov(__qword_ptr[rdi + HDepth], rcx);
        a.jmp(back);

        // In no shadow stack: a frame dropped as gone that was alive on another stack. The
        // graveyards, newest first; the entry found is used up, and its exit recorded.
        a.Label(ref lost);
        if (TestSwitches.NoGraveyard)
        {
            a.ud2();
        }
        EmitRecordsInUse(a, r11d, r11, eax);
        a.Label(ref graves);
        a.test(r11, r11);
        a.jz(nowhere);
        EmitRecordAt(a, rdi, r11, rax);
        a.mov(rcx, GraveEntries);
        a.mov(r8, __qword_ptr[rdi + HGrave]);
        a.Label(ref grave);
        a.test(rcx, rcx);
        a.jz(nextGraves);
        a.dec(r8);
        a.mov(r9, r8);
        a.and(r9, GraveEntries - 1);
        a.shl(r9, EntryShift);
        a.add(r9, rdi);
        a.cmp(__qword_ptr[r9 + GraveOffset + ESlot], rsi);
        a.je(inGrave);
        a.dec(rcx);
        a.jmp(grave);
        a.Label(ref nextGraves);
        a.dec(r11);
        a.jmp(graves);
        a.Label(ref inGrave);
        a.lea(rdi, __[r9 + GraveOffset]);
        a.mov(r10, __qword_ptr[rdi + ERet]);
        a.mov(__qword_ptr[rdi + ESlot], 0);
        a.mov(rcx, __qword_ptr[rdi + EDepth]);
        EmitFindRecord(a, back);                        // recorded in the returning thread's buffer
        EmitRecordExit(a, back, exit, parentBelow: false);
        a.jmp(back);
        a.Label(ref nowhere);
        a.ud2();                                        // no record of this frame anywhere (docs/graph.md)
        return Assemble(a, at);
    }

    /// <summary>Binary search of r9 (ticks) over buckets lo..hi, then inc that bucket of the cell at rsi and jmp <paramref name="exit"/>.</summary>
    private static void EmitBucketIncrement(Assembler a, int lo, int hi, Label exit)
    {
        if (lo == hi)
        {
            a.inc(__dword_ptr[rsi + CHistogram + 4 * lo]);
            a.jmp(exit);
            return;
        }
        int mid = (lo + hi + 1) / 2;                    // bucket k holds 2^k .. 2^(k+1) - 1 ticks
        Label upper = a.CreateLabel();
        if (mid < 31)
        {
            a.cmp(r9, 1 << mid);
        }
        else
        {
            a.mov(r8, 1UL << mid);
            a.cmp(r9, r8);
        }
        a.jae(upper);
        EmitBucketIncrement(a, lo, mid - 1, exit);
        a.Label(ref upper);
        EmitBucketIncrement(a, mid, hi, exit);
    }

    /// <summary>
    /// The return handler's record of an exit: r11 = the thread's record, rdi = the popped entry
    /// (or its copy in a graveyard), rcx = its depth, r10 = the real return address (kept), the
    /// slot at rsp + 8. Writes the exit event (profile: adds the call to its cell and, with
    /// <paramref name="parentBelow"/>, its time to the entry below's callee time), then jumps to
    /// <paramref name="back"/>.
    /// </summary>
    private void EmitRecordExit(Assembler a, Label back, Label exit, bool parentBelow)
    {
        bool events = Options.Mode == GraphMode.Events;
        Label unbusy = a.CreateLabel(), full = a.CreateLabel(), mark = a.CreateLabel(), publish = a.CreateLabel(),
            keepMax = a.CreateLabel(), keepMin = a.CreateLabel(), ticksOk = a.CreateLabel(), selfOk = a.CreateLabel(), histogram = a.CreateLabel();
        a.cmp(__byte_ptr[r11 + HBusy], 0);
        a.jne(back);                                    // we interrupted our own code: return, record nothing
        a.mov(__byte_ptr[r11 + HBusy], (byte)1);
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(rsi, __qword_ptr[r11 + HSink]);
        a.test(rsi, rsi);
        a.jz(unbusy);
        if (events)
        {
            int data = TraceBufferOptions.HeaderBytes;
            EmitReserve(a, rsi, rdx, r9, full);
            a.and(edx, (int)(Buffers.Capacity - 1));
            a.imul(rdx, rdx, Buffers.EventBytes);
            a.add(rdx, rsi);
            a.mov(__qword_ptr[rdx + data + EventLayout.Tsc], rax);
            if (Options.Retval)
            {
                a.mov(r8, __qword_ptr[rsp + 8]);        // the saved rax
                a.mov(__qword_ptr[rdx + data + EventLayout.Value], r8);
            }
            else
            {
                a.mov(__qword_ptr[rdx + data + EventLayout.Value], 0);
            }
            a.mov(rax, __qword_ptr[rdi + ESite]);
            a.mov(__qword_ptr[rdx + data + EventLayout.Site], rax);
            a.lea(rax, __[rcx * 4 + RawEvent.Exit]);
            a.mov(__qword_ptr[rdx + data + EventLayout.Info], rax);
            a.lea(rax, __[rsp + ExitSavedBytes]);       // the slot
            a.mov(__qword_ptr[rdx + data + EventLayout.Slot], rax);
            for (int i = 0; i < Buffers.Args; i++)
            {
                a.mov(__qword_ptr[rdx + data + ArgsAt + 8 * i], 0);
            }
            EmitLossCheck(a, rsi, rax, mark);
            a.Label(ref publish);
            a.inc(__qword_ptr[rsi + TraceBufferOptions.Head]);
        }
        else
        {
            a.sub(rax, __qword_ptr[rdi + ETsc]);        // rax = this call's ticks
            a.jns(ticksOk);                             // the TSCs of two cores can disagree by a little:
            a.xor(eax, eax);                            // a call that moved between them lasted ~0, not 2^64
            a.Label(ref ticksOk);
            a.mov(rdx, __qword_ptr[rdi + ESite]);
            a.shl(rdx, CellShift);
            a.add(rsi, rdx);                            // the cell of (thread, function)
            a.inc(__qword_ptr[rsi + CCalls]);
            a.add(__qword_ptr[rsi + CTotal], rax);
            a.mov(rdx, rax);
            a.sub(rdx, __qword_ptr[rdi + EChild]);
            a.jns(selfOk);
            a.xor(edx, edx);
            a.Label(ref selfOk);
            a.add(__qword_ptr[rsi + CSelf], rdx);
            a.cmp(rax, __qword_ptr[rsi + CMax]);
            a.jbe(keepMax);
            a.mov(__qword_ptr[rsi + CMax], rax);
            a.Label(ref keepMax);
            a.mov(rdx, rax);
            a.not(rdx);
            a.cmp(rdx, __qword_ptr[rsi + CMinInv]);
            a.jbe(keepMin);
            a.mov(__qword_ptr[rsi + CMinInv], rdx);
            a.Label(ref keepMin);
            a.mov(r9, rax);                             // histogram: bucket log2(ticks), counted last (below)
            if (parentBelow)
            {
                a.test(rcx, rcx);
                a.jz(histogram);
                a.add(__qword_ptr[rdi - (1 << EntryShift) + EChild], rax);   // the parent's time in callees
            }
            // The bucket is chosen by predicted branches, not by an address computed from the TSC
            // read: a store to such an address holds up the loads after it until rdtsc completes
            // (about 6 ns a call here). One increment: a signal handler cannot split it. It ends
            // as `back` does: registers popped, jmp r10.
            a.Label(ref histogram);
            a.mov(__byte_ptr[r11 + HBusy], (byte)0);
            a.pop(rdx);
            a.pop(rax);
            EmitBucketIncrement(a, 0, HistogramBuckets - 1, exit);
        }
        a.Label(ref unbusy);
        a.mov(__byte_ptr[r11 + HBusy], (byte)0);
        a.jmp(back);
        if (events)
        {
            a.Label(ref full);
            a.inc(__qword_ptr[rsi + TraceBufferOptions.Lost]);
            a.jmp(unbusy);
            EmitLossMark(a, mark, rsi, __qword_ptr[rdx + TraceBufferOptions.HeaderBytes + 24], rax, r9, publish); // info's high half
        }
    }

    /// <summary>The profile: per thread and function, calls and times (ns). Read while the session is attached.</summary>
    public List<ProfileEntry> ReadProfile(ClockCalibration clock)
    {
        var result = new List<ProfileEntry>();
        if (Options.Mode != GraphMode.Profile)
        {
            return result;
        }
        var byLocal = _local.ToDictionary(kv => kv.Value, kv => kv.Key);
        for (int i = 0; i < BuffersInUse; i++)
        {
            int tid = (int)Heap.Shared.ReadU32(BufferOffset(i) + TraceBufferOptions.Tid);
            ulong row = _rowsOffset + (ulong)i * RowStride;
            for (int local = 0; local < _local.Count; local++)
            {
                ulong cell = row + ((ulong)local << CellShift);
                ulong calls = Heap.Shared.ReadU64(cell + CCalls);
                if (calls == 0)
                {
                    continue;
                }
                result.Add(new ProfileEntry
                {
                    Site = byLocal[local],
                    Tid = tid,
                    Calls = calls,
                    TotalNs = clock.TicksToNs(Heap.Shared.ReadU64(cell + CTotal)),
                    SelfNs = clock.TicksToNs(Heap.Shared.ReadU64(cell + CSelf)),
                    MaxNs = clock.TicksToNs(Heap.Shared.ReadU64(cell + CMax)),
                    MinNs = clock.TicksToNs(~Heap.Shared.ReadU64(cell + CMinInv)),
                });
            }
        }
        return result;
    }

    /// <summary>Profile rows claimed so far: one per thread that made a traced call (0 for function_graph).</summary>
    public int ProfileRows => Options.Mode == GraphMode.Profile ? BuffersInUse : 0;

    /// <summary>Traced functions: the columns of every profile row.</summary>
    public int ProfileFunctions => _local.Count;

    /// <summary>The site index of each profile column.</summary>
    public int[] ProfileSites()
    {
        var sites = new int[_local.Count];
        foreach ((int site, int local) in _local)
        {
            sites[local] = site;
        }
        return sites;
    }

    /// <summary>The thread a profile row belongs to (0 for a moment after the thread claimed it).</summary>
    public int ProfileTid(int row) => (int)Heap.Shared.ReadU32(BufferOffset(row) + TraceBufferOptions.Tid);

    /// <summary>Calls so far of one function in one row: a cheap look before reading the whole cell.</summary>
    public ulong ProfileCalls(int row, int function) => Heap.Shared.ReadU64(CellOffset(row, function) + CCalls);

    /// <summary>
    /// Copies one cell while its thread may be writing it: each field is read once, so fields may
    /// be a call apart (the calls of a call still returning are counted once it has returned).
    /// </summary>
    public void ReadProfileCell(int row, int function, ref ProfileCell cell)
    {
        ulong at = CellOffset(row, function);
        SharedRegion shared = Heap.Shared;
        cell.Calls = shared.ReadU64(at + CCalls);
        cell.TotalTicks = shared.ReadU64(at + CTotal);
        cell.SelfTicks = shared.ReadU64(at + CSelf);
        cell.MaxTicks = shared.ReadU64(at + CMax);
        cell.MinTicks = ~shared.ReadU64(at + CMinInv);
        for (int k = 0; k < HistogramBuckets; k++)
        {
            cell.Buckets[k] = shared.ReadU32(at + CHistogram + (ulong)k * 4);
        }
    }

    private ulong CellOffset(int row, int function) => _rowsOffset + (ulong)row * RowStride + ((ulong)function << CellShift);

    /// <summary>Calls not recorded because a signal handler interrupted Hotwire's own code, or a buffer was full.</summary>
    public ulong Lost
    {
        get
        {
            ulong n = LostNoBuffer;
            for (int i = 0; i < BuffersInUse; i++)
            {
                n += Heap.Shared.ReadU64(BufferOffset(i) + TraceBufferOptions.Lost);
            }
            return n;
        }
    }
}
