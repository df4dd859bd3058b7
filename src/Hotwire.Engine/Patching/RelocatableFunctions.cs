using Hotwire.Symbols;

namespace Hotwire.Patching;

/// <summary>A function without a compiler site whose entry can be relocated: its plan at runtime addresses and its bytes from the patch point on.</summary>
internal sealed record RelocatableFunction(PatchSite Site, EntryPlan Plan, byte[] Bytes, LoadedModule Module);

/// <summary>A function without a compiler site whose entry cannot be relocated, and why.</summary>
internal readonly record struct RefusedFunction(PatchSite Site, string Reason);

/// <summary>
/// The functions of a process's modules that have no compiler site, classified (docs/any-binary.md):
/// one finder for the session (tracing with --relocate, live patches) and for the checks `hotwire
/// patch` makes before it attaches.
/// </summary>
internal static class RelocatableFunctions
{
    /// <param name="wanted">when given, only functions of these names are classified</param>
    public static (List<RelocatableFunction> Relocatable, List<RefusedFunction> Refused) Find(IEnumerable<LoadedModule> modules, Func<string, bool>? wanted = null)
    {
        var relocatable = new List<RelocatableFunction>();
        var refused = new List<RefusedFunction>();
        var seen = new HashSet<ulong>();
        foreach (LoadedModule m in modules)
        {
            FunctionCatalog catalog;
            try
            {
                catalog = FunctionCatalog.Of(m.Elf, m.Path);
            }
            catch (HotwireException)
            {
                continue;   // no symbols and no .eh_frame: nothing to find here
            }
            var siteStarts = new HashSet<ulong>();
            foreach (PatchSite site in m.LinkSites.Sites)
            {
                siteStarts.Add(site.LinkAddress);
                siteStarts.Add(site.LinkAddress - 4);
            }
            if (wanted is not null && !catalog.Functions.Any(f => wanted(f.Name)))
            {
                continue;
            }
            Func<FunctionEntry, bool>? only = wanted is null ? null : f => wanted(f.Name);
            foreach ((FunctionEntry function, EntryPlan plan) in EntryClassifier.ClassifyAll(m.Elf, catalog.Functions, siteStarts, only))
            {
                if (plan.Kind == EntryKind.Refused)
                {
                    refused.Add(new RefusedFunction(
                        new PatchSite(function.Name, true, m.Path, function.Address + m.Bias, function.Address, SiteKind.Unknown, [], false), plan.Reason!));
                }
                if (plan.Kind != EntryKind.Relocatable)
                {
                    continue;
                }
                int skip = (int)(plan.Patch - function.Address);
                byte[] bytes = new byte[Math.Max(plan.Length, 5)];
                if (!m.Elf.TryReadVirtual(plan.Patch, bytes))
                {
                    continue;
                }
                ulong entry = plan.Patch + m.Bias;
                if (!seen.Add(entry))
                {
                    continue;   // an alias of a function already listed
                }
                var site = new PatchSite(function.Name, function.Origin != FunctionOrigin.EhFrame, m.Path, entry, plan.Patch, SiteKind.Relocated, bytes[..5], skip == 4);
                relocatable.Add(new RelocatableFunction(site, plan with { Patch = entry }, bytes, m));
            }
        }
        return (relocatable, refused);
    }
}
