using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

/// <summary>
/// The sites of one process (the kernel's ftrace_pages and ftrace_location): every
/// <see cref="SiteRecord"/> by number (for good: events and counters name sites by it), by address
/// and by function; and the agent's copy of the live ones in shared memory, sorted by address (its
/// SIGTRAP handler binary-searches it), which holds each site's bytes: what restore puts back (the
/// base) and what the agent last installed.
/// </summary>
internal sealed class SiteTable
{
    private readonly List<SiteRecord> _records = [];
    private readonly Dictionary<ulong, SiteRecord> _byAddress = [];
    private ILookup<string, SiteRecord>? _byFunction;

    /// <summary>Every site the session has numbered, unloaded ones included (<see cref="SiteRecord.Gone"/>).</summary>
    public IReadOnlyList<SiteRecord> Records => _records;

    /// <summary>The live site at <paramref name="address"/>, or null.</summary>
    public SiteRecord? At(ulong address) => _byAddress.GetValueOrDefault(address);

    public bool Contains(ulong address) => _byAddress.ContainsKey(address);

    /// <summary>The sites by function name (a function may have several: static functions of one name in two modules).</summary>
    public ILookup<string, SiteRecord> ByFunction => _byFunction ??= _records.ToLookup(s => s.Function, StringComparer.Ordinal);

    /// <summary>The next site's number.</summary>
    public int NextIndex => _records.Count;

    /// <summary>Adds a site numbered <see cref="NextIndex"/>.</summary>
    public void Add(SiteRecord site)
    {
        if (site.Index != _records.Count)
        {
            throw new ArgumentException($"site {site.Index} added as number {_records.Count}", nameof(site));
        }
        _records.Add(site);
        _byAddress[site.Address] = site;
        _byFunction = null;
    }

    /// <summary>The site's library was unloaded: its record stays (events name it), its address is free.</summary>
    public void Forget(SiteRecord site)
    {
        site.Gone = true;
        _byAddress.Remove(site.Address);
    }

    // ---- the agent's copy

    /// <summary>Where the agent's table is (heap offset; its count is the u64 before it).</summary>
    public ulong Offset { get; private set; }

    /// <summary>The site's entry in the agent's table (AgentLayout.Site*).</summary>
    public ulong Entry(SiteRecord s) => Offset + (ulong)s.Slot * L.SiteEntrySize;

    /// <summary>What restore puts back on the site now (its original bytes, or a live patch's jmp), as the agent has it.</summary>
    public SiteBytes Base(SharedRegion shared, SiteRecord s) => SiteBytes.Read(shared, Entry(s) + L.SiteOriginal);

    /// <summary>The emulation record of the base when it is not a NOP, as the agent has it (0: a NOP).</summary>
    public ulong BaseEmu(SharedRegion shared, SiteRecord s) => shared.ReadU64(Entry(s) + L.SiteBaseEmu);

    /// <summary>Writes a base outside a batch (adopting a live patch an earlier Hotwire left): before <see cref="SetCurrent"/>.</summary>
    public void SetBase(SharedRegion shared, SiteRecord s, SiteBytes bytes, ulong emu)
    {
        bytes.Write(shared, Entry(s) + L.SiteOriginal);
        shared.WriteU64(Entry(s) + L.SiteBaseEmu, emu);
    }

    public void SetCurrent(SharedRegion shared, SiteRecord s, SiteBytes bytes)
    {
        s.Current = bytes;
        bytes.Write(shared, Entry(s) + L.SiteCurrent);
    }

    /// <summary>
    /// The first table, at <paramref name="offset"/> (room for every site), filled while the agent
    /// sees no site: the caller publishes its count (the u64 before it) last, once everything the
    /// agent reads with it (the code ranges) is in place.
    /// </summary>
    public void WriteFirst(SharedRegion shared, ulong offset)
    {
        Offset = offset;
        foreach (SiteRecord s in _records)
        {
            WriteEntry(shared, Entry(s), s, 0);
        }
    }

    /// <summary>
    /// A new table at <paramref name="offset"/> of the live sites, sorted by address, each given its
    /// new slot: a site that was in the old table keeps its entry as the agent has it (its base and
    /// published emulation), a new one gets its bytes and <paramref name="baseEmu"/>. The caller
    /// switches the agent to it with one store. Returns the live sites in table order.
    /// </summary>
    public List<SiteRecord> Rebuild(SharedRegion shared, ulong offset, Func<SiteRecord, ulong> baseEmu)
    {
        List<SiteRecord> live = _records.Where(s => !s.Gone).OrderBy(s => s.Address).ToList();
        for (int i = 0; i < live.Count; i++)
        {
            SiteRecord s = live[i];
            ulong e = offset + (ulong)i * L.SiteEntrySize;
            if (s.Fresh || s.Slot < 0)
            {
                WriteEntry(shared, e, s, baseEmu(s));
            }
            else
            {
                shared.Bytes(Entry(s), L.SiteEntrySize).CopyTo(shared.Bytes(e, L.SiteEntrySize));
            }
        }
        for (int i = 0; i < live.Count; i++)
        {
            live[i].Slot = i;
        }
        shared.WriteU64(offset - 8, (ulong)live.Count);
        Offset = offset;
        return live;
    }

    private static void WriteEntry(SharedRegion shared, ulong e, SiteRecord s, ulong baseEmu)
    {
        shared.WriteU64(e + L.SiteAddress, s.Address);
        s.Original.Write(shared, e + L.SiteOriginal);
        s.Current.Write(shared, e + L.SiteCurrent);
        shared.At<byte>(e + L.SiteLen) = (byte)s.Length;
        if (baseEmu != 0)
        {
            shared.WriteU64(e + L.SiteBaseEmu, baseEmu);
        }
    }
}
