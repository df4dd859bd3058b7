using Hotwire.Elf;
using Hotwire.Interop;

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
        + "-pg -mfentry -mnop-mcount -mrecord-mcount (non-PIE) and link without -pg";

    private static readonly byte[] Endbr64 = [0xf3, 0x0f, 0x1e, 0xfa];

    public static ModuleSites Scan(ElfFile elf)
    {
        var recorded = new SortedSet<ulong>();
        foreach (string sectionName in (ReadOnlySpan<string>)["__mcount_loc", "__patchable_function_entries"])
        {
            foreach (ElfSection section in elf.Sections)
            {
                // Relocatable links may leave several sections of the same name; take them all.
                if (section.Name != sectionName || section.Type == ElfFile.SHT_NOBITS)
                {
                    continue;
                }
                for (ulong off = 0; off + 8 <= section.Size; off += 8)
                {
                    if (elf.TryReadLoadedWord(section.Address + off, out ulong site) && site != 0)
                    {
                        recorded.Add(site);
                    }
                }
            }
        }

        var functions = FunctionSymbols(elf, out bool fromSymtab);
        var sites = new List<PatchSite>(recorded.Count);
        int unsupported = 0;
        Span<byte> bytes = stackalloc byte[8];
        Span<byte> before = stackalloc byte[4];
        foreach (ulong address in recorded)
        {
            if (!elf.TryReadVirtual(address, bytes[..6]))
            {
                unsupported++;
                continue;
            }
            SiteKind kind = SiteKinds.Classify(bytes[..6]);
            bool afterEndbr = address >= 4 && elf.TryReadVirtual(address - 4, before) && before.SequenceEqual(Endbr64);
            string? name = null;
            if (functions.TryGetValue(address, out string? exact))
            {
                name = exact;
            }
            else if (afterEndbr && functions.TryGetValue(address - 4, out string? withEndbr))
            {
                name = withEndbr;
            }
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

    /// <summary>Start address → demangled name, from .symtab, else .dynsym. Global names win over local aliases.</summary>
    private static Dictionary<ulong, string> FunctionSymbols(ElfFile elf, out bool fromSymtab)
    {
        IReadOnlyList<ElfSymbol> symbols = elf.ReadSymbols(dynamic: false);
        fromSymtab = symbols.Count > 0;
        if (!fromSymtab)
        {
            symbols = elf.ReadSymbols(dynamic: true);
        }
        var best = new Dictionary<ulong, ElfSymbol>();
        foreach (ElfSymbol s in symbols)
        {
            if ((s.Type != ElfFile.STT_FUNC && s.Type != ElfFile.STT_GNU_IFUNC) || s.SectionIndex == 0 || s.Name.Length == 0)
            {
                continue;
            }
            if (!best.TryGetValue(s.Value, out ElfSymbol current) || Rank(s) < Rank(current))
            {
                best[s.Value] = s;
            }
        }
        var names = new Dictionary<ulong, string>(best.Count);
        foreach ((ulong address, ElfSymbol s) in best)
        {
            names[address] = CxxAbi.Demangle(StripVersion(s.Name));
        }
        return names;

        static int Rank(ElfSymbol s) => s.Binding switch
        {
            ElfFile.STB_GLOBAL => 0,
            ElfFile.STB_WEAK => 1,
            _ => 2,
        };
    }

    private static string StripVersion(string name)
    {
        int at = name.IndexOf('@');
        return at > 0 ? name[..at] : name;
    }
}
