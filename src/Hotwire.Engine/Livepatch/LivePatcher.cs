using System.Text;
using System.Text.Json;
using Hotwire.Patching;

namespace Hotwire.Livepatch;

/// <summary>
/// The live patches of a process as one redirecting ops: each patched function's site sends its
/// calls to the newest patch's replacement. It stays when Hotwire goes (persistent). One ops for
/// every patch keeps stacking, revert and replace a matter of which target each site gets.
/// </summary>
public sealed class LivePatchOps : Ops
{
    public LivePatchOps()
        : base("live patches")
    {
    }

    /// <summary>Site address → the replacement its calls go to.</summary>
    internal Dictionary<ulong, ulong> Targets { get; } = [];

    public override bool Redirects => true;

    public override bool Persistent => true;

    internal override ulong RedirectTarget(SiteRecord site) => Targets[site.Address];
}

/// <summary>One replaced function of a patch, as recorded in the target.</summary>
public sealed class PatchedFunction
{
    public string Name { get; set; } = "";

    public ulong Site { get; set; }

    public ulong Target { get; set; }

    public ulong TargetSize { get; set; }
}

/// <summary>A patch as recorded in the target: it outlives every Hotwire process.</summary>
public sealed class PatchRecord
{
    public int Id { get; set; }

    public string Path { get; set; } = "";

    public DateTime Applied { get; set; }

    public ulong Base { get; set; }

    public ulong Span { get; set; }

    /// <summary>active, reverted, superseded (by a --replace), or unloaded (its library was, with dlclose).</summary>
    public string State { get; set; } = "active";

    public List<PatchedFunction> Functions { get; set; } = [];
}

public sealed class PatchRegistryData
{
    public int Version { get; set; } = 1;

    public int NextId { get; set; } = 1;

    public List<PatchRecord> Patches { get; set; } = [];

    /// <summary>
    /// A change being made: written before the sites change, cleared once they have. A Hotwire
    /// killed in between leaves it, and the next reader decides from the sites' bytes whether the
    /// change happened (<see cref="LivePatcher.Reconcile"/>).
    /// </summary>
    public PendingChange? Pending { get; set; }
}

/// <summary>The registry as it will be once a change is in place, and the sites the change moves.</summary>
public sealed class PendingChange
{
    public PatchRegistryData Data { get; set; } = new();

    public List<PendingSite> Sites { get; set; } = [];
}

/// <summary>A site's resting bytes (what the dead-man switch leaves there) before and after the change.</summary>
public sealed class PendingSite
{
    public ulong Address { get; set; }

    public int Length { get; set; }

    public ulong Before { get; set; }

    public ulong After { get; set; }
}

/// <summary>Source-generated JSON for the registry: no reflection, so a first patch is not slowed by it.</summary>
[System.Text.Json.Serialization.JsonSourceGenerationOptions(PropertyNamingPolicy = System.Text.Json.Serialization.JsonKnownNamingPolicy.CamelCase)]
[System.Text.Json.Serialization.JsonSerializable(typeof(PatchRegistryData))]
internal sealed partial class RegistryJson : System.Text.Json.Serialization.JsonSerializerContext
{
}

/// <summary>What a thread was doing at the moment of a switch.</summary>
public sealed record ThreadCheck(int Tid, string Name, string State, IReadOnlyList<string> InsideOld);

/// <summary>The outcome of apply or revert, for the report.</summary>
public sealed record PatchResult(PatchRecord Patch, IReadOnlyList<(string Name, ulong Start, ulong End)> OldCode, double Milliseconds);

/// <summary>
/// Applies, stacks, reverts and lists live patches in one attached process. The patch state lives
/// in the target (a small <c>memfd:hotwire-patches</c> mapping holding JSON), so a later Hotwire
/// finds and adopts it. Patch code is never unmapped: a thread may still be inside it.
/// </summary>
public sealed class LivePatcher
{
    private const string RegistryName = "hotwire-patches";
    private const ulong RegistryBytes = 1 << 20;
    private static readonly byte[] s_magic = "HWPATCH1"u8.ToArray();

    private readonly Session _session;
    private readonly ProcessMemory _memory;
    private ulong _registry;
    private PatchRegistryData _data;
    private readonly Dictionary<string, List<(int PatchId, ulong Target)>> _stacks = new(StringComparer.Ordinal);
    private readonly LivePatchOps _ops = new();
    private TargetSymbols? _symbols;   // the session's modules do not change: index their symbols once

    private LivePatcher(Session session, ProcessMemory memory, ulong registry, PatchRegistryData data)
    {
        _session = session;
        _memory = memory;
        _registry = registry;
        _data = data;
    }

    public IReadOnlyList<PatchRecord> Patches => _data.Patches;

    /// <summary>The registry of pid's patches, read without attaching (null when it has none).</summary>
    public static PatchRegistryData? Read(int pid, IMemoryReader memory, out ulong address)
    {
        address = 0;
        MemoryMapping map = ProcMaps.Read(pid).FirstOrDefault(m => m.Path.StartsWith("/memfd:" + RegistryName, StringComparison.Ordinal));
        if (map.End == 0)
        {
            return null;
        }
        Span<byte> header = stackalloc byte[12];
        if (!memory.TryRead(map.Start, header) || !header[..8].SequenceEqual(s_magic))
        {
            return null;
        }
        int length = BitConverter.ToInt32(header[8..]);
        var json = new byte[length];
        if (length <= 0 || length > (int)RegistryBytes - 12 || !memory.TryRead(map.Start + 12, json))
        {
            throw new HotwireException($"pid {pid}'s live-patch record is damaged");
        }
        address = map.Start;
        PatchRegistryData data = JsonSerializer.Deserialize(json, RegistryJson.Default.PatchRegistryData) ?? throw new HotwireException($"pid {pid}'s live-patch record is damaged");
        return Settle(Reconcile(pid, data, memory), memory);
    }

    /// <summary>
    /// An active patch whose functions no longer hold its jump is one whose library was unloaded
    /// (dlclose, a server's module unload): its code went, or came back unpatched at a new load.
    /// Such a patch is recorded as unloaded; it is not reapplied to the new copy.
    /// </summary>
    public static PatchRegistryData Settle(PatchRegistryData data, IMemoryReader memory)
    {
        var first = new byte[1];
        // In place: its jmp, or a jmp/call to a trampoline (traced meanwhile), or an int3 (a batch
        // under way). Gone: unmapped, or plain code again (the NOPs of a fresh load).
        bool InPlace(PatchedFunction f) => memory.TryRead(f.Site, first) && first[0] is 0xe9 or 0xe8 or 0xcc;
        foreach (PatchRecord p in data.Patches.Where(p => p.State == "active" && !p.Functions.Any(InPlace)))
        {
            p.State = "unloaded";
        }
        return data;
    }

    /// <summary>
    /// The registry as the process really is. A change left pending by a Hotwire that died while
    /// making it either happened (every site it moves holds its new resting bytes: the batch and the
    /// new bases went in together) or did not (every site holds the old ones); the record says so
    /// from then on.
    /// </summary>
    public static PatchRegistryData Reconcile(int pid, PatchRegistryData data, IMemoryReader memory)
    {
        if (data.Pending is not { } pending)
        {
            return data;
        }
        int switched = 0, unswitched = 0;
        foreach (PendingSite site in pending.Sites)
        {
            var live = new byte[site.Length];
            if (!memory.TryRead(site.Address, live))
            {
                throw new HotwireException($"pid {pid}'s live-patch record is damaged: it names code at 0x{site.Address:x} that cannot be read");
            }
            ulong bytes = SiteBytes.From(live).Lo;   // a patched site is 5 or 6 bytes: the registry keeps 8
            ulong mask = site.Length >= 8 ? ulong.MaxValue : (1UL << (site.Length * 8)) - 1;
            if (bytes == (site.After & mask))
            {
                switched++;
            }
            else if (bytes == (site.Before & mask))
            {
                unswitched++;
            }
            else
            {
                throw new HotwireException(
                    $"pid {pid}'s live patches are being changed by another Hotwire right now (0x{site.Address:x} holds neither its old nor its new code); try again when it has finished");
            }
        }
        if (switched > 0 && unswitched > 0)
        {
            throw new HotwireException($"pid {pid}'s live-patch record is damaged: a change was left half made ({switched} of {pending.Sites.Count} functions switched)");
        }
        PatchRegistryData result = unswitched > 0 ? data : pending.Data;
        result.Pending = null;
        return result;
    }

    private static PatchRegistryData Clone(PatchRegistryData data)
        => JsonSerializer.Deserialize(JsonSerializer.SerializeToUtf8Bytes(data, RegistryJson.Default.PatchRegistryData), RegistryJson.Default.PatchRegistryData)!;

    /// <summary>
    /// Makes a change of the patch set: the registry first records it as pending, then one batch moves
    /// the sites (the agent changes their bases in the same command), then the registry records it as
    /// done. Killed at any moment, Hotwire leaves a record that <see cref="Reconcile"/> makes true.
    /// </summary>
    private void Commit(PatchRegistryData next, Dictionary<string, List<(int PatchId, ulong Target)>> saved)
    {
        bool recorded = false;
        try
        {
            _session.SetSites(_ops, PatchedSites(), bases =>
            {
                PatchRegistryData intent = Clone(_data);
                intent.Pending = new PendingChange
                {
                    Data = next,
                    Sites = bases.Select(b => new PendingSite { Address = b.Site.Address, Length = b.Site.Length, Before = b.Before.Lo, After = b.After.Lo }).ToList(),
                };
                if (!TestSwitches.NoPatchIntent)
                {
                    Save(intent);
                }
                recorded = true;
            });
        }
        catch
        {
            _stacks.Clear();
            foreach ((string k, List<(int, ulong)> v) in saved)
            {
                _stacks[k] = v;
            }
            PatchedSites();
            if (recorded)
            {
                try
                {
                    Save(_data); // nothing changed: the record says so
                }
                catch (HotwireException)
                {
                    // the pending record stays, and the next reader finds the sites unswitched
                }
            }
            throw;
        }
        if (TestSwitches.PauseAfterPatchBatch is TimeSpan pause)
        {
            Console.Error.WriteLine("hotwire: test: the sites are switched, the record is not yet written");
            Thread.Sleep(pause);
        }
        _data = next;
        Save(_data);
    }

    /// <summary>Takes over the patches in place: each function's newest patch becomes this session's ops.</summary>
    public static LivePatcher Open(Session session)
    {
        if (session.Patcher is { } open)
        {
            return open;
        }
        ProcessMemory memory = ProcessMemory.Open(session.Pid, writable: true);
        PatchRegistryData data = Read(session.Pid, memory, out ulong address) ?? new PatchRegistryData();
        var patcher = new LivePatcher(session, memory, address, data);
        if (address != 0)
        {
            patcher.Save(data); // a change a killed Hotwire left pending is settled in the record too
        }
        // Functions patched without a compiler site get their relocated entry (a new detour: the
        // jmp in place goes to the patch, and a revert restores the original bytes from the file).
        var patched = data.Patches.Where(p => p.State == "active").SelectMany(p => p.Functions.Select(f => f.Name)).ToHashSet(StringComparer.Ordinal);
        if (patched.Count > 0)
        {
            Patchable patchable = Patchable.Find(session.Image, patched, n => session.SitesByFunction[n].Count());
            session.PlaceRelocatable(patchable.Relocatable);
        }
        foreach (PatchRecord p in data.Patches.Where(p => p.State == "active").OrderBy(p => p.Id))
        {
            // A function of a patch that spans libraries may have gone with one of them (Settle).
            foreach (PatchedFunction f in p.Functions.Where(f => session.SitesByFunction[f.Name].Any(s => s.Address == f.Site)))
            {
                patcher.Stack(f.Name).Add((p.Id, f.Target));
            }
        }
        if (patcher._stacks.Count > 0)
        {
            session.Adopt(patcher._ops, patcher.PatchedSites());
        }
        session.Patcher = patcher;
        return patcher;
    }

    private List<(int PatchId, ulong Target)> Stack(string function)
    {
        if (!_stacks.TryGetValue(function, out List<(int, ulong)>? stack))
        {
            _stacks[function] = stack = [];
        }
        return stack;
    }

    // Every function with an active patch, its site pointed at the newest one.
    private List<SiteRecord> PatchedSites()
    {
        _ops.Targets.Clear();
        var sites = new List<SiteRecord>();
        foreach ((string function, List<(int PatchId, ulong Target)> stack) in _stacks.Where(kv => kv.Value.Count > 0))
        {
            SiteRecord site = _session.SitesOf(function).Single();
            _ops.Targets[site.Address] = stack[^1].Target;
            sites.Add(site);
        }
        return sites;
    }

    /// <summary>
    /// Loads <paramref name="patch"/> into the target and redirects the functions it replaces (by
    /// name, or as <paramref name="map"/> says: old → new), in one batch. With
    /// <paramref name="replace"/> it supersedes every earlier patch atomically.
    /// </summary>
    public PatchResult Apply(PatchObject patch, IReadOnlyDictionary<string, string> map, bool replace)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        TargetSymbols symbols = _symbols ??= new TargetSymbols(_session.Image, _memory);
        Patchable patchable = Patchable.Find(_session.Image, Names(patch, map), n => _session.SitesByFunction[n].Count());
        List<(string Old, Elf.ElfSymbol New)> pairs = Plan(patch, map, _session.Image, symbols, patchable);
        _session.PlaceRelocatable(patchable.Relocatable.Where(f => pairs.Any(p => p.Old == f.Site.Function)));

        SiteRecord first = _session.SitesOf(pairs[0].Old).Single();
        ulong loadBase = MapNear(first.Address, patch.Span);
        byte[] image = patch.Image(loadBase, patch.Resolve(symbols, _session.Pid, loadBase));
        _memory.Write(loadBase, image);
        foreach ((ulong offset, ulong length, int prot) in patch.Protections())
        {
            Check(_session.Channel.Syscall(SyscallNumbers.mprotect, loadBase + offset, length, (ulong)prot), "mprotect the patch");
        }

        int id = _data.NextId;
        var record = new PatchRecord { Id = id, Path = patch.Path, Applied = DateTime.UtcNow, Base = loadBase, Span = patch.Span };
        var old = new List<(string, ulong, ulong)>();
        foreach ((string name, Elf.ElfSymbol sym) in pairs)
        {
            SiteRecord site = _session.SitesOf(name).Single();
            record.Functions.Add(new PatchedFunction { Name = name, Site = site.Address, Target = loadBase + sym.Value, TargetSize = Math.Max(sym.Size, 1) });
            old.Add(CurrentCode(name, site));
        }
        if (replace)
        {
            foreach (string name in _stacks.Where(kv => kv.Value.Count > 0 && !pairs.Any(p => p.Old == kv.Key)).Select(kv => kv.Key))
            {
                old.Add(CurrentCode(name, _session.SitesOf(name).Single()));
            }
        }
        var saved = _stacks.ToDictionary(kv => kv.Key, kv => kv.Value.ToList());
        if (replace)
        {
            foreach (List<(int, ulong)> stack in _stacks.Values)
            {
                stack.Clear();
            }
        }
        foreach (PatchedFunction f in record.Functions)
        {
            Stack(f.Name).Add((id, f.Target));
        }
        PatchRegistryData next = Clone(_data);
        if (replace)
        {
            foreach (PatchRecord p in next.Patches.Where(p => p.State == "active"))
            {
                p.State = "superseded";
            }
        }
        next.NextId++;
        next.Patches.Add(record);
        Commit(next, saved);
        return new PatchResult(record, old, clock.Elapsed.TotalMilliseconds);
    }

    /// <summary>
    /// Which target function each of the patch's functions replaces, with every check that needs
    /// no change to the target: each replaced function exists once with a patch site, and every
    /// symbol the patch needs resolves. Works on a process Hotwire has not attached to.
    /// </summary>
    public static List<(string Old, Elf.ElfSymbol New)> Plan(PatchObject patch, IReadOnlyDictionary<string, string> map, ProcessImage image, IMemoryReader memory)
    {
        ILookup<string, PatchSite> sites = image.AllSites.ToLookup(s => s.Function, StringComparer.Ordinal);
        return Plan(patch, map, image, new TargetSymbols(image, memory), Patchable.Find(image, Names(patch, map), n => sites[n].Count()));
    }

    // Every target function name the patch may replace: its functions' names and --map's old names.
    private static HashSet<string> Names(PatchObject patch, IReadOnlyDictionary<string, string> map)
        => [.. patch.Functions.Select(f => f.Name), .. map.Keys];

    /// <summary>
    /// Which of the names a patch may replace have a site: a compiler site, or else an entry that
    /// can be relocated (found only for names without a compiler site: classifying a module is not free).
    /// </summary>
    private sealed record Patchable(Func<string, int> Sites, List<RelocatableFunction> Relocatable, List<RefusedFunction> Refused)
    {
        public static Patchable Find(ProcessImage image, HashSet<string> names, Func<string, int> compilerSites)
        {
            var missing = names.Where(n => compilerSites(n) == 0).ToHashSet(StringComparer.Ordinal);
            (List<RelocatableFunction> relocatable, List<RefusedFunction> refused) = missing.Count == 0
                ? ([], [])
                : RelocatableFunctions.Find(image.Modules, missing.Contains);
            ILookup<string, RelocatableFunction> byName = relocatable.ToLookup(f => f.Site.Function, StringComparer.Ordinal);
            return new Patchable(n => compilerSites(n) is int c and > 0 ? c : byName[n].Count(), relocatable, refused);
        }

        public string? RefusedBecause(string name) => Refused.FirstOrDefault(r => r.Site.Function == name) is { Site: not null } r ? r.Reason : null;
    }

    private static List<(string Old, Elf.ElfSymbol New)> Plan(PatchObject patch, IReadOnlyDictionary<string, string> map, ProcessImage image, TargetSymbols symbols,
        Patchable patchable)
    {
        string file = System.IO.Path.GetFileName(patch.Path);
        var functions = patch.Functions.GroupBy(f => f.Name).ToDictionary(g => g.Key, g => g.First());
        // Which target function each replacement takes over.
        var pairs = new List<(string Old, Elf.ElfSymbol New)>();
        foreach ((string from, string to) in map)
        {
            if (!functions.TryGetValue(to, out Elf.ElfSymbol sym))
            {
                throw new HotwireException($"--map {from}={to}: {file} defines no function {to}");
            }
            pairs.Add((from, sym));
        }
        foreach (Elf.ElfSymbol f in functions.Values)
        {
            if (!map.Values.Contains(f.Name) && !map.ContainsKey(f.Name) && patchable.Sites(f.Name) > 0)
            {
                pairs.Add((f.Name, f));
            }
        }
        if (pairs.Count == 0)
        {
            throw new HotwireException($"{file} replaces nothing: none of its functions ({string.Join(", ", functions.Keys.Take(8))}) is a patchable function of pid {image.Pid}; give them the names of the functions they replace, or use --map old=new");
        }
        foreach ((string name, _) in pairs)
        {
            int sites = patchable.Sites(name);
            if (sites == 0 && patchable.RefusedBecause(name) is { } reason)
            {
                throw new HotwireException($"{name} cannot be replaced: it has no compiler site and its entry cannot be relocated ({reason}); nothing was changed");
            }
            if (sites == 0)
            {
                bool exists = image.Modules.Any(m => m.Elf.ReadSymbols(false).Concat(m.Elf.ReadSymbols(true)).Any(s => s.Name == name && s.SectionIndex != 0));
                throw new HotwireException(exists
                    ? $"{name} has no patch site in pid {image.Pid} and is not a function entry Hotwire can relocate (`hotwire ls --all` lists what can be)"
                    : $"pid {image.Pid} has no function {name}");
            }
            if (sites > 1)
            {
                throw new HotwireException($"{name} names {sites} functions in pid {image.Pid} (static functions of the same name): Hotwire cannot tell which one to replace");
            }
        }
        patch.Resolve(symbols, image.Pid, 0);
        return pairs;
    }


    /// <summary>Removes the newest active patch: each of its functions goes back to the patch below, or to its original code.</summary>
    public PatchResult Revert()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        PatchRecord? newest = _data.Patches.Where(p => p.State == "active").MaxBy(p => p.Id)
            ?? throw new HotwireException($"pid {_session.Pid} has no live patch to revert");
        var old = new List<(string, ulong, ulong)>();
        var saved = _stacks.ToDictionary(kv => kv.Key, kv => kv.Value.ToList());
        foreach (PatchedFunction f in newest.Functions)
        {
            old.Add((f.Name, f.Target, f.Target + f.TargetSize));
            Stack(f.Name).RemoveAll(e => e.PatchId == newest.Id);
        }
        PatchRegistryData next = Clone(_data);
        next.Patches.Single(p => p.Id == newest.Id).State = "reverted";
        Commit(next, saved);
        return new PatchResult(next.Patches.Single(p => p.Id == newest.Id), old, clock.Elapsed.TotalMilliseconds);
    }

    // The code a function runs now (before a switch): its newest patch's, or its original body.
    private (string, ulong, ulong) CurrentCode(string name, SiteRecord site)
    {
        if (_stacks.TryGetValue(name, out List<(int PatchId, ulong Target)>? stack) && stack.Count > 0)
        {
            PatchedFunction f = _data.Patches.Single(p => p.Id == stack[^1].PatchId).Functions.Single(x => x.Name == name);
            return (name, f.Target, f.Target + f.TargetSize);
        }
        if (_session.Image.Symbolizer.TryRange(site.Address, out ulong start, out ulong end))
        {
            return (name, start, end);
        }
        return (name, site.Address, site.Address + 16);
    }

    /// <summary>
    /// Address space within a jmp's reach (±2 GiB) of the whole module <paramref name="near"/> is in
    /// (the patch's code calls into it), mapped read-write (<see cref="TargetAddresses"/>).
    /// </summary>
    private ulong MapNear(ulong near, ulong size)
    {
        LoadedModule? module = _session.Image.Modules.FirstOrDefault(m => near >= m.Start && near < m.End);
        var occupied = ProcMaps.Read(_session.Pid).Select(m => (m.Start, m.End));
        foreach (ulong at in TargetAddresses.Candidates(module?.Start ?? near, module?.End ?? near + 1, size, occupied))
        {
            long r = _session.Channel.Syscall(SyscallNumbers.mmap, at, size, Sys.PROT_READ | Sys.PROT_WRITE, Sys.MAP_PRIVATE | Sys.MAP_ANONYMOUS | Sys.MAP_FIXED_NOREPLACE, ulong.MaxValue, 0);
            if (r == (long)at)
            {
                return at;
            }
        }
        throw new HotwireException($"no free address space within 2 GiB of 0x{near:x} in pid {_session.Pid} for the patch");
    }

    private void Save(PatchRegistryData data)
    {
        if (_registry == 0)
        {
            _registry = CreateRegistry();
        }
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(data, RegistryJson.Default.PatchRegistryData);
        if ((ulong)json.Length + 12 > RegistryBytes)
        {
            throw new HotwireException("too many live patches recorded in this process");
        }
        var bytes = new byte[12 + json.Length];
        s_magic.CopyTo(bytes, 0);
        BitConverter.TryWriteBytes(bytes.AsSpan(8), json.Length);
        json.CopyTo(bytes, 12);
        _memory.Write(_registry, bytes);
    }

    private ulong CreateRegistry()
    {
        byte[] name = Encoding.ASCII.GetBytes(RegistryName + "\0");
        ulong scratch = _session.Heap.Allocate(64, 8);
        name.CopyTo(_session.Heap.Shared.Bytes(scratch, name.Length));
        long fd = Check(_session.Channel.Syscall(SyscallNumbers.memfd_create, _session.Heap.Address(scratch), Sys.MFD_CLOEXEC), "memfd_create");
        try
        {
            Check(_session.Channel.Syscall(SyscallNumbers.ftruncate, (ulong)fd, RegistryBytes), "ftruncate");
            return (ulong)Check(_session.Channel.Syscall(SyscallNumbers.mmap, 0, RegistryBytes, Sys.PROT_READ | Sys.PROT_WRITE, Sys.MAP_SHARED, (ulong)fd, 0), "mmap");
        }
        finally
        {
            _session.Channel.Syscall(SyscallNumbers.close, (ulong)fd);
        }
    }

    private long Check(long result, string what) => Errors.CheckInTarget(result, what, _session.Pid);

    /// <summary>
    /// For each thread, whether one of <paramref name="code"/> is on its stack now: livepatch's
    /// consistency question. A thread blocked in a system call is checked (its stack pointer and pc
    /// come from /proc/PID/task/TID/syscall; return addresses on its stack that follow a call
    /// instruction and point into old code count); a thread running on a CPU cannot be checked
    /// without stopping it and is reported as running.
    /// </summary>
    public static List<ThreadCheck> CheckThreads(int pid, IReadOnlyList<(string Name, ulong Start, ulong End)> code, IMemoryReader memory, int skipTid)
    {
        var result = new List<ThreadCheck>();
        List<MemoryMapping> maps = ProcMaps.Read(pid);
        Span<byte> before = stackalloc byte[7];
        foreach (string dir in Directory.EnumerateDirectories($"/proc/{pid}/task"))
        {
            if (!int.TryParse(System.IO.Path.GetFileName(dir), out int tid) || tid == skipTid)
            {
                continue;
            }
            string name = ReadOrEmpty($"{dir}/comm").Trim();
            string[] f = ReadOrEmpty($"{dir}/syscall").Trim().Split(' ');
            if (f.Length < 9)
            {
                result.Add(new ThreadCheck(tid, name, f.Length == 1 && f[0] == "running" ? "running" : "gone", []));
                continue;
            }
            ulong sp = Convert.ToUInt64(f[^2], 16), pc = Convert.ToUInt64(f[^1], 16);
            var inside = new HashSet<string>();
            foreach ((string fn, ulong start, ulong end) in code)
            {
                if (pc >= start && pc < end)
                {
                    inside.Add(fn);
                }
            }
            MemoryMapping stack = maps.FirstOrDefault(m => sp >= m.Start && sp < m.End);
            if (stack.End != 0)
            {
                ulong length = Math.Min(stack.End - sp, 8UL << 20) & ~7UL;
                var words = new byte[length];
                if (memory.TryRead(sp, words))
                {
                    for (int i = 0; i + 8 <= words.Length; i += 8)
                    {
                        ulong w = BitConverter.ToUInt64(words, i);
                        foreach ((string fn, ulong start, ulong end) in code)
                        {
                            if (w > start && w <= end && memory.TryRead(w - 7, before) && FollowsCall(before))
                            {
                                inside.Add(fn);
                            }
                        }
                    }
                }
            }
            result.Add(new ThreadCheck(tid, name, "blocked", inside.Order().ToList()));
        }
        return result;
    }

    // The 7 bytes before a return address end with a call: e8 rel32, or ff /2 with a 0-, 1-, 4- or 5-byte tail.
    private static bool FollowsCall(ReadOnlySpan<byte> b) =>
        b[2] == 0xe8
        || (b[5] == 0xff && (b[6] & 0x38) == 0x10 && b[6] >= 0xc0)
        || (b[4] == 0xff && (b[5] & 0x38) == 0x10)
        || (b[1] == 0xff && (b[2] & 0x38) == 0x10)
        || (b[0] == 0xff && (b[1] & 0x38) == 0x10);

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
        catch (UnauthorizedAccessException)
        {
            return "";
        }
    }
}
