using Hotwire.Symbols;
using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

// Functions without a compiler site (docs/any-binary.md): with SessionOptions.RelocateEntries, an ops'
// filter also chooses among them. A chosen one gets a detour (its first instructions relocated,
// then a jmp back) in the trampoline region near its module, and a site record whose bytes are the
// entry's first 5: its "NOP" is the original code (emulated, while an int3 is there, by a jump to the
// relocated copy), anything else a jmp to a small thunk (call the trampoline, then the relocated
// copy). The batch that first changes those bytes pauses after its int3s, like a NOP sled's, and moves
// any thread found at an instruction boundary inside them (live, or saved in a signal frame) to the
// same point in the copy. Restore, detach and the dead-man switch put the original bytes back
// through the same protocol; detours stay mapped.
public sealed unsafe partial class Session
{
    private bool _relocateEntries;

    // Relocatable functions not chosen yet: runtime entry address → the function.
    private Dictionary<ulong, RelocatableFunction>? _relocatable;

    // Functions without a site that cannot be relocated, with the reason (for the message when a filter chooses only those).
    private List<RefusedFunction> _refused = [];

    // The relocatable functions of every module as sites (placed or not), found once.
    private List<PatchSite>? _candidates;

    // Thunks by (site, trampoline): call the trampoline, then the relocated copy.
    private readonly Dictionary<(int Site, ulong Trampoline), ulong> _thunks = [];

    /// <summary>Relocatable functions of every module (those without a compiler site), as sites; found once.</summary>
    private List<PatchSite> RelocatableCandidates()
    {
        if (_candidates is not null)
        {
            return _candidates;
        }
        // Launched, the dynamic linker has not set up thread-local storage yet (it does after mapping
        // the libraries), and the tracers read the thread pointer: its functions are left alone.
        ulong linker = Launched ? Injection.ProgramLauncher.Aux(Pid, Sys.AT_BASE) ?? 0 : 0;
        (List<RelocatableFunction> found, _refused) = RelocatableFunctions.Find(Image.Modules);
        foreach (RelocatableFunction f in found.Where(f => linker != 0 && f.Module.Start == linker).ToList())
        {
            found.Remove(f);
            _refused.Add(new RefusedFunction(f.Site, "the dynamic linker's, at launch: it runs before thread-local storage exists; trace it with --pid"));
        }
        _relocatable = [];
        _candidates = [];
        foreach (RelocatableFunction f in found)
        {
            if (Table.At(f.Site.Address) is not { } placed)
            {
                _relocatable[f.Site.Address] = f;
                _candidates.Add(f.Site);
            }
            else if (placed.Relocation is not null)
            {
                _candidates.Add(placed.Site); // placed already (for a live patch): a filter may choose it too
            }
        }
        return _candidates;
    }

    // The modules changed: find the candidates again when next asked.
    private void ForgetRelocatableCandidates() => _candidates = null;

    /// <summary>
    /// Gives relocatable functions site records, their detours placed now (for a live patch, which
    /// names its functions, and for libraries that came), so that <see cref="SitesOf"/> finds them.
    /// Functions placed already are left as they are.
    /// </summary>
    internal void PlaceRelocatable(IEnumerable<RelocatableFunction> functions)
    {
        lock (_gate)
        {
            ThrowIfDetached();
            _relocatable ??= [];
            var unplaced = new List<PatchSite>();
            foreach (RelocatableFunction f in functions)
            {
                if (!Table.Contains(f.Site.Address))
                {
                    _relocatable[f.Site.Address] = f;
                    unplaced.Add(f.Site);
                }
            }
            if (unplaced.Count > 0)
            {
                PlaceRelocated(unplaced);
            }
        }
    }

    /// <summary>
    /// Relocated entries for the functions of libraries that just came (at the linker's consistent
    /// point, before any of their code has run) that a tracing ops' filter chooses. Fresh: no thread
    /// can be inside them yet, so their first batch needs no pause.
    /// </summary>
    private List<SiteRecord> RelocateLate(List<LoadedModule> came)
    {
        var filters = Registry.Registered.Where(o => !o.Redirects && o.TakesLateSites).Select(o => o.BuildFilter()).ToList();
        List<RelocatableFunction> wanted = RelocatableFunctions.Find(came).Relocatable
            .Where(f => !Table.Contains(f.Site.Address) && filters.Any(filter => filter.Matches(f.Site))).ToList();
        if (wanted.Count == 0)
        {
            return [];
        }
        try
        {
            PlaceRelocatable(wanted);
        }
        catch (HotwireException e)
        {
            Notice?.Invoke($"the functions without sites of {string.Join(", ", came.Select(m => m.Name))} loaded in pid {Pid} are not traced: {e.Message}");
            return [];
        }
        var records = wanted.Select(f => Table.At(f.Site.Address)!).ToList();
        foreach (SiteRecord r in records)
        {
            r.Fresh = true;
        }
        return records;
    }

    /// <summary>
    /// When a filter chose nothing: if it matches functions whose entries cannot be relocated, the
    /// message names them and why (one line), instead of "no traceable function".
    /// </summary>
    private HotwireException ExplainRefused(FunctionFilter filter, HotwireException noMatch)
    {
        List<RefusedFunction> matched = _refused.Where(r => filter.Matches(r.Site)).ToList();
        if (matched.Count == 0)
        {
            return noMatch;
        }
        string first = string.Join("; ", matched.Take(3).Select(r => $"{r.Site.Function} [{r.Site.ModuleName}]: {r.Reason}"));
        string what = matched.Count == 1
            ? "the function the filter matches cannot be traced: it has no compiler site and its entry cannot be relocated"
            : $"the {matched.Count} functions the filter matches cannot be traced: they have no compiler site and their entries cannot be relocated";
        return new HotwireException($"{what} ({first}{(matched.Count > 3 ? "; …" : "")}); `hotwire ls --all` lists every function and why");
    }

    /// <summary>Places detours for relocatable functions an ops chose and gives them site records (in the agent's table).</summary>
    private void PlaceRelocated(List<PatchSite> chosen)
    {
        if (Table.NextIndex + chosen.Count > SiteIdCapacity)
        {
            throw new HotwireException($"{chosen.Count} functions without a compiler site would make more sites than the session can number ({SiteIdCapacity}); choose fewer");
        }
        // Room near each module for the detours, thunks and trampolines of its chosen functions (about
        // 1 KiB each, as for compiler sites): its region if that has it, else one more region near it.
        var regions = new Dictionary<LoadedModule, CodeRegion>();
        foreach (IGrouping<LoadedModule, PatchSite> g in chosen.GroupBy(p => _relocatable![p.Address].Module))
        {
            int count = g.Count();
            regions[g.Key] = _plan!.Regions.TryGetValue(g.Key, out CodeRegion? r) && r.Fits(4096 + (ulong)count * 1024)
                ? r
                : MapLateRegion(g.Key, count);
        }
        foreach (PatchSite p in chosen)
        {
            (_, EntryPlan plan, byte[] bytes, LoadedModule module) = _relocatable![p.Address];
            CodeRegion region = regions[module];
            Detour detour = DetourBuilder.Build(bytes, plan, region.TargetAddress + region.Used);
            ulong at = region.Place(Shared, detour.Code, 16, $"trampoline space near {module.Name} is exhausted; trace fewer functions");
            var boundaries = detour.Boundaries.ToDictionary(b => p.Address + (ulong)b.Original, b => at + (ulong)b.Copy);
            var record = new SiteRecord(Table.NextIndex, p, region)
            {
                Relocation = new RelocatedEntry(at + (ulong)detour.Entry, at + (ulong)detour.Relocated, boundaries),
            };
            record.Slot = -1; // not in the agent's table yet
            Table.Add(record);
            _relocatable.Remove(p.Address);
        }
        RebuildSiteTable();
    }

    /// <summary>
    /// A relocated site's bytes and emulation for its ops (<see cref="Desired"/>'s counterpart): the
    /// original bytes (a trap on them continues in the relocated copy); a live patch alone, a jmp to
    /// it; anything else, a jmp to a thunk that calls the site's trampoline (which returns, or for a
    /// live patch drops its return slot and goes to it) and then continues in the relocated copy.
    /// </summary>
    private (SiteBytes Bytes, ulong Emu) DesiredRelocated(SiteRecord s, RelocatedEntry relocation)
    {
        SiteDecision d = SitePlanner.Decide(s.Address, s.Ops, s, static (o, site) => o.RedirectTarget(site));
        if (d.Shape == SiteShape.Nop)
        {
            return (s.Original, Records.Jump(relocation.Relocated));
        }
        if (d.Shape == SiteShape.Jump)
        {
            return (SitePlanner.Bytes(d, s.Address, s.Length), Records.Jump(d.JumpTarget));
        }
        ulong trampoline = Trampolines.For(s);
        if (!_thunks.TryGetValue((s.Index, trampoline), out ulong thunk))
        {
            thunk = PlaceThunk(s.Region, trampoline, relocation.Relocated);
            _thunks[(s.Index, trampoline)] = thunk;
        }
        return (SitePlanner.Bytes(new SiteDecision(SiteShape.Jump, thunk, null), s.Address, 5), Records.Jump(thunk));
    }

    // call trampoline; jmp relocated
    private ulong PlaceThunk(CodeRegion region, ulong trampoline, ulong relocated)
    {
        ulong at = region.Reserve(Shared, 10, 16, "trampoline space near this module is exhausted; trace fewer functions", out Span<byte> code);
        code[0] = 0xe8;
        BitConverter.TryWriteBytes(code[1..], checked((int)((long)trampoline - (long)(at + 5))));
        code[5] = 0xe9;
        BitConverter.TryWriteBytes(code[6..], checked((int)((long)relocated - (long)(at + 10))));
        return at;
    }

    /// <summary>
    /// Where a thread found at <paramref name="pc"/> inside a site being converted continues: past a NOP
    /// sled, or at the same instruction of a relocated entry's copy; null when it is not inside one
    /// (or, in a relocated entry, not on an instruction boundary: only a trap on byte 0 can leave it there).
    /// </summary>
    private ulong? MovedPc(ulong site, ulong pc)
    {
        if (Table.At(site) is { Relocation: { } relocation })
        {
            return relocation.Boundaries.TryGetValue(pc, out ulong moved) ? moved : null;
        }
        return site + 5;
    }
}
