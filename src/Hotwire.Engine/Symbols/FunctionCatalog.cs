using System.Buffers.Binary;
using Hotwire.Elf;

namespace Hotwire.Symbols;

/// <summary>Where a function of a <see cref="FunctionCatalog"/> was found.</summary>
public enum FunctionOrigin
{
    /// <summary>The file's own <c>.symtab</c>.</summary>
    Symtab,
    /// <summary>The <c>.symtab</c> of a separate debug file (build-id or <c>.gnu_debuglink</c>).</summary>
    DebugFile,
    /// <summary><c>.dynsym</c> (exported functions of a stripped file), sized by <c>st_size</c>.</summary>
    Dynsym,
    /// <summary>An <c>.eh_frame</c> FDE no symbol names: listed as <c>sub_ADDRESS</c>.</summary>
    EhFrame,
}

/// <summary>A function: its demangled name, link-time address and size in bytes.</summary>
public readonly record struct FunctionEntry(string Name, ulong Address, ulong Size, FunctionOrigin Origin);

/// <summary>
/// Every function of an ELF file, with or without a compiler patch site, for tracing unmodified code:
/// <c>.symtab</c>; else the <c>.symtab</c> of its separate debug file (Debian's <c>-dbgsym</c> and
/// <c>libc6-dbg</c> packages install them under <c>/usr/lib/debug</c>), found by build-id or
/// <c>.gnu_debuglink</c>; else <c>.dynsym</c> together with the <c>.eh_frame</c> FDEs, where an FDE
/// that starts no named function is listed as <c>sub_</c> and its link-time address in hex (a stable
/// name: the same in every process that maps the file). Left out: <c>.cold</c> symbols; FDEs whose
/// unwind rules say they start inside a frame; FDEs of PLT stubs; and code only jumped to, never
/// called, where the linker puts <c>.text.unlikely</c> (<see cref="IsFragment"/>).
/// </summary>
public sealed class FunctionCatalog
{
    /// <summary>The prefix of an unnamed function's name: <c>sub_</c> and its link-time address in lowercase hex.</summary>
    public const string UnnamedPrefix = "sub_";

    /// <summary>Where Debian installs separate debug files.</summary>
    public const string DebugRoot = "/usr/lib/debug";

    private FunctionCatalog(IReadOnlyList<FunctionEntry> functions, string source, string? debugFile)
    {
        Functions = functions;
        Source = source;
        DebugFile = debugFile;
    }

    /// <summary>By address, one entry per start address.</summary>
    public IReadOnlyList<FunctionEntry> Functions { get; }

    /// <summary>Where the list came from, in words (for messages): ".symtab", "debug file PATH", ".dynsym and .eh_frame".</summary>
    public string Source { get; }

    /// <summary>The separate debug file the names came from, if one was used.</summary>
    public string? DebugFile { get; }

    /// <summary>Lists the functions of <paramref name="elf"/> (the file at <paramref name="path"/>).</summary>
    /// <param name="debugRoot">Where to look for debug files (tests point it elsewhere).</param>
    public static FunctionCatalog Of(ElfFile elf, string path, string debugRoot = DebugRoot)
    {
        List<FunctionEntry> fromSymtab = FromSymbols(elf.SymbolTable(dynamic: false), FunctionOrigin.Symtab);
        if (fromSymtab.Count > 0)
        {
            return new FunctionCatalog(fromSymtab, ".symtab", null);
        }
        if (FindDebugFile(elf, path, debugRoot) is string debugPath)
        {
            try
            {
                ElfFile debug = ElfFile.Load(debugPath);
                List<FunctionEntry> fromDebug = FromSymbols(debug.SymbolTable(dynamic: false), FunctionOrigin.DebugFile);
                if (fromDebug.Count > 0)
                {
                    return new FunctionCatalog(fromDebug, $"debug file {debugPath}", debugPath);
                }
            }
            catch (HotwireException)
            {
                // An unreadable debug file: fall back to what the file itself has.
            }
        }
        List<FunctionEntry> dynamic = FromSymbols(elf.SymbolTable(dynamic: true), FunctionOrigin.Dynsym);
        var starts = new HashSet<ulong>(dynamic.Select(f => f.Address));
        List<FrameDescription> frames = EhFrame.Read(elf);
        (HashSet<ulong> called, Dictionary<ulong, ulong> lowestJumpFrom) = References(elf, frames);
        var stubs = elf.Sections.Where(x => x.Name is ".plt" or ".plt.got" or ".plt.sec").ToArray();
        foreach (FrameDescription fde in frames)
        {
            if (!fde.EntryLike || stubs.Any(x => fde.Start >= x.Address && fde.Start < x.Address + x.Size) || IsFragment(elf, fde.Start, called, lowestJumpFrom))
            {
                continue;
            }
            if (starts.Add(fde.Start))
            {
                dynamic.Add(new FunctionEntry(UnnamedName(fde.Start), fde.Start, fde.Size, FunctionOrigin.EhFrame));
            }
        }
        dynamic.Sort((a, b) => a.Address.CompareTo(b.Address));
        return new FunctionCatalog(dynamic, ".dynsym and .eh_frame", null);
    }

    /// <summary>
    /// Whether the code at <paramref name="start"/> looks like a fragment the compiler split off a function
    /// (<c>.cold</c>), not a function: it is reached only by jumps (jmp, jcc) from other code, never called,
    /// and it lies where the linker puts <c>.text.unlikely</c> (before a program's entry point; in a
    /// library, before every function that jumps to it). When the function it came from has no frame,
    /// its unwind rules look like an entry's, so this is the only test that catches it. Stripped copies of
    /// memcached and Lua list exactly the functions their symbol tables have (361 and 697); in a library, a
    /// function reached only by tail calls from later code would be taken for a fragment.
    /// </summary>
    private static bool IsFragment(ElfFile elf, ulong start, HashSet<ulong> called, Dictionary<ulong, ulong> lowestJumpFrom)
    {
        if (called.Contains(start) || !lowestJumpFrom.TryGetValue(start, out ulong from))
        {
            return false;
        }
        return elf.IsProgram && elf.EntryPoint != 0 ? start < elf.EntryPoint : start < from;
    }

    /// <summary>
    /// Decodes each FDE's range: the targets of direct calls, and for each target of direct jumps (jmp,
    /// jcc) from outside its own range, the lowest address that jumps to it.
    /// </summary>
    private static (HashSet<ulong> Called, Dictionary<ulong, ulong> LowestJumpFrom) References(ElfFile elf, List<FrameDescription> frames)
    {
        var called = new HashSet<ulong>();
        var jumped = new Dictionary<ulong, ulong>();
        byte[] buffer = [];
        foreach (FrameDescription fde in frames)
        {
            if (fde.Size == 0 || fde.Size > 1 << 24)
            {
                continue;
            }
            int size = (int)fde.Size;
            if (buffer.Length < size)
            {
                buffer = new byte[Math.Max(size, buffer.Length * 2)];
            }
            if (!elf.TryReadVirtual(fde.Start, buffer.AsSpan(0, size)))
            {
                continue;
            }
            var reader = new Iced.Intel.ByteArrayCodeReader(buffer, 0, size);
            var decoder = Iced.Intel.Decoder.Create(64, reader, fde.Start);
            while (reader.CanReadByte)
            {
                decoder.Decode(out Iced.Intel.Instruction instruction);
                if (instruction.IsInvalid || instruction.Op0Kind != Iced.Intel.OpKind.NearBranch64)
                {
                    continue;
                }
                ulong target = instruction.NearBranchTarget;
                if (instruction.FlowControl == Iced.Intel.FlowControl.Call)
                {
                    called.Add(target);
                }
                else if (target < fde.Start || target >= fde.Start + fde.Size)
                {
                    jumped[target] = Math.Min(jumped.GetValueOrDefault(target, ulong.MaxValue), instruction.IP);
                }
            }
        }
        return (called, jumped);
    }

    /// <summary>The stable name of a function no symbol names.</summary>
    public static string UnnamedName(ulong address) => $"{UnnamedPrefix}{address:x}";

    /// <summary>
    /// The separate debug file of <paramref name="elf"/>: <c>ROOT/.build-id/xx/rest.debug</c> by its
    /// build-id, else its <c>.gnu_debuglink</c> name beside it, in <c>.debug/</c> beside it, or under
    /// ROOT at its directory. A candidate whose build-id differs from the file's is not it.
    /// </summary>
    public static string? FindDebugFile(ElfFile elf, string path, string debugRoot = DebugRoot)
    {
        byte[]? buildId = BuildId(elf);
        var candidates = new List<string>();
        if (buildId is { Length: > 1 })
        {
            string hex = Convert.ToHexStringLower(buildId);
            candidates.Add(Path.Combine(debugRoot, ".build-id", hex[..2], hex[2..] + ".debug"));
        }
        if (elf.FindSection(".gnu_debuglink") is ElfSection link && link.Type != ElfFile.SHT_NOBITS)
        {
            string name = ElfFile.CString(elf.SectionData(link), 0);
            if (name.Length > 0 && !name.Contains('/'))
            {
                string directory = Path.GetDirectoryName(Path.GetFullPath(path)) ?? "/";
                candidates.Add(Path.Combine(directory, name));
                candidates.Add(Path.Combine(directory, ".debug", name));
                candidates.Add(Path.Combine(debugRoot, directory.TrimStart('/'), name));
            }
        }
        foreach (string candidate in candidates)
        {
            if (!File.Exists(candidate) || Path.GetFullPath(candidate) == Path.GetFullPath(path))
            {
                continue;
            }
            if (buildId is not null)
            {
                try
                {
                    byte[]? other = BuildId(ElfFile.Load(candidate));
                    if (other is not null && !other.AsSpan().SequenceEqual(buildId))
                    {
                        continue;
                    }
                }
                catch (HotwireException)
                {
                    continue;
                }
            }
            return candidate;
        }
        return null;
    }

    /// <summary>The GNU build-id note's bytes, or null.</summary>
    public static byte[]? BuildId(ElfFile elf)
    {
        foreach (ElfSection section in elf.Sections)
        {
            if (section.Type != 7 /* SHT_NOTE */ || section.Name != ".note.gnu.build-id")
            {
                continue;
            }
            ReadOnlySpan<byte> note = elf.SectionData(section);
            if (note.Length < 16)
            {
                return null;
            }
            uint nameSize = BinaryPrimitives.ReadUInt32LittleEndian(note);
            uint descSize = BinaryPrimitives.ReadUInt32LittleEndian(note[4..]);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(note[8..]);
            int desc = 12 + (int)((nameSize + 3) & ~3u);
            if (type != 3 /* NT_GNU_BUILD_ID */ || desc + descSize > note.Length)
            {
                return null;
            }
            return note.Slice(desc, (int)descSize).ToArray();
        }
        return null;
    }

    /// <summary>Defined, sized function symbols, one per address (global over weak over local, then the shorter name), <c>.cold</c> parts left out.</summary>
    private static List<FunctionEntry> FromSymbols(ElfSymbolTable table, FunctionOrigin origin)
    {
        var chosen = new Dictionary<ulong, int>();
        for (int i = 0; i < table.Count; i++)
        {
            if (table.Type(i) != ElfFile.STT_FUNC || table.SectionIndex(i) == 0 || table.Size(i) == 0 || !table.HasName(i))
            {
                continue;
            }
            string name = table.Name(i);
            if (name.EndsWith(".cold", StringComparison.Ordinal) || name.Contains(".cold.", StringComparison.Ordinal))
            {
                continue;
            }
            ulong address = table.Value(i);
            if (!chosen.TryGetValue(address, out int best) || Better(table, i, best))
            {
                chosen[address] = i;
            }
        }
        var result = new List<FunctionEntry>(chosen.Count);
        foreach ((ulong address, int symbol) in chosen)
        {
            result.Add(new FunctionEntry(CxxAbi.Demangle(StripVersion(table.Name(symbol))), address, table.Size(symbol), origin));
        }
        result.Sort((a, b) => a.Address.CompareTo(b.Address));
        return result;
    }

    private static bool Better(ElfSymbolTable table, int candidate, int best)
    {
        int a = FunctionSymbols.Rank(table.Binding(candidate)), b = FunctionSymbols.Rank(table.Binding(best));
        if (a != b)
        {
            return a < b;
        }
        int la = (int)table.NameOffset(candidate), lb = (int)table.NameOffset(best);
        int na = table.Name(candidate).Length, nb = table.Name(best).Length;
        return na != nb ? na < nb : la < lb;
    }

    private static string StripVersion(string name)
    {
        int at = name.IndexOf('@');
        return at > 0 ? name[..at] : name;
    }
}
