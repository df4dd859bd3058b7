using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

/// <summary>
/// The sites' trampolines (the kernel's create_trampoline, one per ftrace_ops; here one per site
/// and set of ops): each ops' entry code inlined in order, then return to the function, or for a
/// redirect drop our return slot and jump (the caller's return address stays on top). Ftrace calls
/// a list function that loops over the ops; composing their code per site costs no loop and no
/// indirect call. A trampoline is kept for good: a thread may still be inside an old one.
/// </summary>
/// <param name="grow">maps another region near the site's module when its region is full, and makes it the region of every site that had the full one</param>
internal sealed class Trampolines(SharedRegion shared, Func<SiteRecord, CodeRegion> grow)
{
    private readonly Dictionary<ulong, TrampolineTemplate> _templates = [];

    /// <summary>The site's trampoline for the ops it has now, built in its module's region the first time.</summary>
    public ulong For(SiteRecord s)
    {
        // Ops sit on a site in registration order, so the set of their ids names the composition.
        ulong mask = s.OpsMask;
        ulong existing = s.Trampoline(mask);
        if (existing != 0)
        {
            return existing;
        }
        if (!_templates.TryGetValue(mask, out TrampolineTemplate? template))
        {
            template = TrampolineTemplate.Build(s.Ops);
            _templates[mask] = template;
        }
        // The site's emulation record first (the int3 handler reads it while the call goes in),
        // then the code: no allocation in the data heap and no lookup per trampoline.
        ulong bytes = (ulong)(L.RecordSize + template.Code.Length);
        if (!s.Region.Fits((bytes + 15) & ~15UL))
        {
            grow(s);
        }
        ulong at = s.Region.Reserve(shared, bytes, 16,
            "trampoline space near this module is exhausted; trace fewer functions", out Span<byte> space) + L.RecordSize;
        EmulationRecords.Write(space[..L.RecordSize], L.KindCall, 5, at);
        Span<byte> code = space[L.RecordSize..];
        template.Code.CopyTo(code);
        foreach (TrampolineTemplate.Fixup f in template.Fixups)
        {
            BitConverter.TryWriteBytes(code[f.Offset..], f.ValueFor(s));
        }
        s.AddTrampoline(mask, at);
        return at;
    }

    /// <summary>The emulation record of a call to <paramref name="trampoline"/>: just before it.</summary>
    public static ulong CallRecord(ulong trampoline) => trampoline - L.RecordSize;

    /// <summary>Ops ids in <paramref name="freed"/> name other sets from now on: their templates go.</summary>
    public void ForgetOps(ulong freed)
    {
        foreach (ulong mask in _templates.Keys.Where(m => (m & freed) != 0).ToList())
        {
            _templates.Remove(mask);
        }
    }
}
