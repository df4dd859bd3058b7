using Hotwire.Elf;

namespace Hotwire.Patching;

/// <summary>The patch sites of one ELF image, at link-time addresses.</summary>
public sealed class ModuleSites
{
    public ModuleSites(string path, IReadOnlyList<PatchSite> sites, bool hasSymbols, int unsupported)
    {
        Path = path;
        Sites = sites;
        HasSymbols = hasSymbols;
        UnsupportedSites = unsupported;
    }

    public string Path { get; }

    public IReadOnlyList<PatchSite> Sites { get; }

    /// <summary>False for a stripped image: its sites are named by address.</summary>
    public bool HasSymbols { get; }

    /// <summary>Recorded sites that are not at a function entry or hold unknown bytes; never patched.</summary>
    public int UnsupportedSites { get; }
}

/// <summary>
/// Finds patch sites from the compiler's own records: <c>__mcount_loc</c> (<c>-mrecord-mcount</c>) and
/// <c>__patchable_function_entries</c> (<c>-fpatchable-function-entry</c>), with their relocations
/// applied, and names each by the function symbol that starts at it (or 4 bytes before, past endbr64).
/// </summary>
public static class SiteDiscovery
{
    public const string HowToAddSites =
        "compile with -fpatchable-function-entry=5 (any program or library), or with "
        + "-pg -mfentry -mnop-mcount -mrecord-mcount (non-PIE) and link without -pg; "
        + "or, without rebuilding, trace with --relocate (hotwire ls --all lists the functions it can take)";

    private static readonly byte[] Endbr64 = [0xf3, 0x0f, 0x1e, 0xfa];

    public static ModuleSites Scan(ElfFile elf)
    {
        // A list sorted once rather than a SortedSet: 50,000 sites would be 50,000 tree nodes for the GC.
        var recorded = new List<ulong>();
        foreach (string sectionName in (ReadOnlySpan<string>)["__mcount_loc", "__patchable_function_entries"])
        {
            foreach (ElfSection section in elf.Sections)
            {
                // Relocatable links may leave several sections of the same name; take them all.
                if (section.Name != sectionName || section.Type == ElfFile.SHT_NOBITS)
                {
                    continue;
                }
                recorded.EnsureCapacity(recorded.Count + elf.SectionData(section).Length / 8); // its size as far as the file holds it
                for (ulong off = 0; off + 8 <= section.Size; off += 8)
                {
                    if (elf.TryReadLoadedWord(section.Address + off, out ulong site) && site != 0)
                    {
                        recorded.Add(site);
                    }
                }
            }
        }

        recorded.Sort();

        var functions = FunctionSymbols.Of(elf);
        bool fromSymtab = functions.FromSymtab;
        var sites = new List<PatchSite>(recorded.Count);
        int unsupported = 0;
        Span<byte> bytes = stackalloc byte[8];
        Span<byte> before = stackalloc byte[4];
        ulong previous = 0; // no site is at 0 (skipped above)
        foreach (ulong address in recorded)
        {
            if (address == previous)
            {
                continue; // recorded twice (in both sections, or in two sections of one name)
            }
            previous = address;
            if (!elf.TryReadVirtual(address, bytes[..6]))
            {
                unsupported++;
                continue;
            }
            SiteKind kind = SiteKinds.Classify(bytes[..6]);
            bool afterEndbr = address >= 4 && elf.TryReadVirtual(address - 4, before) && before.SequenceEqual(Endbr64);
            string? name = NameAt(functions, address) ?? (afterEndbr ? NameAt(functions, address - 4) : null);
            if (kind == SiteKind.Unknown || (name is null && functions.Count > 0 && fromSymtab))
            {
                // With a full symbol table, a recorded address that starts no function is a prefix
                // site (-fpatchable-function-entry=N,M with M > 0): emulating a call there is unsafe.
                unsupported++;
                continue;
            }
            sites.Add(new PatchSite(
                name ?? $"0x{address:x}",
                name is not null,
                elf.Name,
                address,
                address,
                kind,
                bytes[..kind.Length()].ToArray(),
                afterEndbr));
        }
        return new ModuleSites(elf.Name, sites, fromSymtab, unsupported);
    }

    private static string? NameAt(FunctionSymbols functions, ulong address) => functions.At(address) is int i and >= 0 ? functions.Name(i) : null;
}
