namespace Hotwire.Patching;

/// <summary>Hotwire's record of one site in an attached process (ftrace's dyn_ftrace).</summary>
public sealed class SiteRecord
{
    internal SiteRecord(int index, PatchSite site, CodeRegion region)
    {
        Index = index;
        Slot = index;
        Site = site;
        Region = region;
        Length = site.Kind == SiteKind.FentryCallIndirect ? 6 : 5;
        Original = SiteBytes.From(site.OriginalBytes.AsSpan(0, Length));
        Current = Original;
    }

    /// <summary>The site's number in the session, for good: events and per-site counters use it.</summary>
    public int Index { get; }

    /// <summary>Its entry in the agent's site table (sorted by address): changes when libraries come and go.</summary>
    internal int Slot { get; set; }

    /// <summary>Its library was unloaded: the record stays for the events that name it, the site is no more.</summary>
    public bool Gone { get; internal set; }

    /// <summary>In a library loaded after attach that has not run yet: no thread can be inside its NOP sled.</summary>
    internal bool Fresh { get; set; }

    public PatchSite Site { get; }

    /// <summary>For a <see cref="SiteKind.Relocated"/> site: its detour in the target.</summary>
    internal RelocatedEntry? Relocation { get; init; }

    public ulong Address => Site.Address;

    public string Function => Site.Function;

    /// <summary>Bytes Hotwire rewrites: 5, or 6 for a PIE <c>call *__fentry__</c>.</summary>
    public int Length { get; }

    public SiteBytes Original { get; }

    /// <summary>The bytes installed now (Hotwire's mirror of the agent's table).</summary>
    public SiteBytes Current { get; internal set; }

    /// <summary>The ops attached to this site, in registration order.</summary>
    internal List<Ops> Ops { get; } = [];

    /// <summary>Where its trampolines go: the newest region near its module (a full one is followed by another).</summary>
    internal CodeRegion Region { get; set; }

    // Its trampolines, one per set of ops (mask) it has had, kept while the ops keep their ids: a
    // thread may still be inside an old one. The first inline (most sites only ever have one).
    private (ulong Mask, ulong At) _trampoline0;
    private List<(ulong Mask, ulong At)>? _trampolines;

    internal ulong Trampoline(ulong mask)
    {
        if (_trampoline0.At != 0 && _trampoline0.Mask == mask)
        {
            return _trampoline0.At;
        }
        foreach ((ulong m, ulong at) in _trampolines ?? [])
        {
            if (m == mask)
            {
                return at;
            }
        }
        return 0;
    }

    internal void AddTrampoline(ulong mask, ulong at)
    {
        if (_trampoline0.At == 0)
        {
            _trampoline0 = (mask, at);
        }
        else
        {
            (_trampolines ??= []).Add((mask, at));
        }
    }

    /// <summary>Forgets the trampolines of the ops sets <paramref name="forget"/> names (they are not reused; their code stays).</summary>
    internal void ForgetTrampolines(Func<ulong, bool> forget)
    {
        if (_trampoline0.At != 0 && forget(_trampoline0.Mask))
        {
            _trampoline0 = default;
        }
        _trampolines?.RemoveAll(t => forget(t.Mask));
        if (_trampoline0.At == 0 && _trampolines is { Count: > 0 } rest)
        {
            _trampoline0 = rest[^1];
            rest.RemoveAt(rest.Count - 1);
        }
    }

    // The last two (ops mask → bytes, emulation) results: toggling an ops flips between two states.
    internal (ulong Mask, SiteBytes Bytes, ulong Emu) DesiredCache0 = NoCache;
    internal (ulong Mask, SiteBytes Bytes, ulong Emu) DesiredCache1 = NoCache;

    /// <summary>A cache slot that holds nothing (no ops set has every id).</summary>
    internal static readonly (ulong Mask, SiteBytes Bytes, ulong Emu) NoCache = (ulong.MaxValue, default, 0);

    internal ulong OpsMask
    {
        get
        {
            ulong mask = 0;
            foreach (Ops o in Ops)
            {
                mask |= 1UL << o.Id;
            }
            return mask;
        }
    }

    /// <summary>True once the site holds a single instruction Hotwire can rewrite (NOP5 form or ours).</summary>
    internal bool Converted => Site.Kind == SiteKind.Nop5 || Current != Original;
}

/// <summary>An R-X code region within ±2 GiB of a module's sites, where its trampolines live.</summary>
/// <summary>Where a relocated entry's detour lies in the target (runtime addresses).</summary>
/// <param name="Relocated">The relocated instructions, then a jmp back: what the function's original bytes do.</param>
/// <param name="Boundaries">An instruction boundary inside the rewritten bytes → the same point in the relocated copy.</param>
internal sealed record RelocatedEntry(ulong Detour, ulong Relocated, IReadOnlyDictionary<ulong, ulong> Boundaries);
