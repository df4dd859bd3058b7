using Hotwire.Elf;

namespace Hotwire.Livepatch;

/// <summary>
/// A live patch: a position-independent shared object (<c>gcc -shared -fPIC</c>) whose functions
/// replace functions of a running process. Hotwire is its loader (DESIGN.md §7): no <c>dlopen</c>
/// in the target, so no loader or malloc lock is ever taken there. Everything that can be checked
/// is checked here, before the target is touched.
/// </summary>
public sealed class PatchObject
{
    private const uint PT_TLS = 7;
    private const uint R_NONE = 0, R_64 = 1, R_GLOB_DAT = 6, R_JUMP_SLOT = 7, R_RELATIVE = 8;

    private PatchObject(string path, ElfFile elf, IReadOnlyList<ElfSymbol> dynsyms, ulong span)
    {
        Path = path;
        Elf = elf;
        DynamicSymbols = dynsyms;
        Span = span;
    }

    public string Path { get; }

    internal ElfFile Elf { get; }

    /// <summary>.dynsym without its null entry: index i of a relocation is element i − 1.</summary>
    internal IReadOnlyList<ElfSymbol> DynamicSymbols { get; }

    /// <summary>Bytes of address space the loaded patch takes (its PT_LOAD segments, page-rounded).</summary>
    public ulong Span { get; }

    /// <summary>The functions the patch defines (global, with code): the candidates for replacing.</summary>
    public IEnumerable<ElfSymbol> Functions => DynamicSymbols.Where(s => s.Type == ElfFile.STT_FUNC && s.SectionIndex != 0 && s.Binding == ElfFile.STB_GLOBAL);

    public static PatchObject Load(string path)
    {
        if (!File.Exists(path))
        {
            throw new HotwireException($"{path}: no such patch file (build one with gcc -shared -fPIC, see examples/livepatch)");
        }
        ElfFile elf = ElfFile.Load(path);
        string name = System.IO.Path.GetFileName(path);
        if (elf.Type != ElfType.SharedObject)
        {
            throw new HotwireException($"{name} is not a shared object: build the patch with gcc -shared -fPIC");
        }
        if (elf.Segments.Any(s => s.Type == PT_TLS))
        {
            throw new HotwireException($"{name} uses thread-local storage (__thread or thread_local): a live patch cannot add TLS to a running process");
        }
        var dynsyms = elf.ReadSymbols(dynamic: true);
        var symtab = elf.ReadSymbols(dynamic: false);
        foreach (string section in new[] { ".init_array", ".preinit_array" })
        {
            if (elf.FindSection(section) is not { } s || s.Size == 0)
            {
                continue;
            }
            // gcc's crtbeginS.o puts frame_dummy there in every shared object: that one is harmless.
            var relocs = elf.DynamicRelocations().Where(r => r.Offset >= s.Address && r.Offset < s.Address + s.Size).ToList();
            var named = relocs.Select(r => symtab.FirstOrDefault(y => y.Value == (ulong)r.Addend && y.Type == ElfFile.STT_FUNC).Name ?? $"0x{r.Addend:x}").ToList();
            var user = named.Where(n => n != "frame_dummy").ToList();
            if (user.Count > 0 || (relocs.Count == 0 && s.Size > 0 && section == ".preinit_array"))
            {
                throw new HotwireException($"{name} has constructors ({string.Join(", ", user)}): a live patch's code must not need to run at load; initialise state from the replacement functions instead");
            }
        }
        foreach ((ulong offset, uint type, int sym, long _) in elf.DynamicRelocations())
        {
            if (type is R_NONE or R_64 or R_GLOB_DAT or R_JUMP_SLOT or R_RELATIVE)
            {
                continue;
            }
            string what = type is 16 or 17 or 18 ? "thread-local storage" : type == 37 ? "an IFUNC of its own" : $"relocation type {type}";
            throw new HotwireException($"{name} needs {what} at 0x{offset:x}: Hotwire's loader handles RELATIVE, 64, GLOB_DAT and JUMP_SLOT relocations");
        }
        ulong span = elf.Segments.Where(s => s.Type == ElfFile.PT_LOAD).Select(s => s.VirtualAddress + s.MemorySize).DefaultIfEmpty(0UL).Max();
        if (span == 0)
        {
            throw new HotwireException($"{name} has nothing to load");
        }
        return new PatchObject(System.IO.Path.GetFullPath(path), elf, dynsyms, (span + 4095) & ~4095UL);
    }

    /// <summary>
    /// Resolves every symbol the patch needs: its own definitions first, then the target's main
    /// program (including static functions and variables from .symtab), then its libraries.
    /// Throws, naming the symbol, when one cannot be found.
    /// </summary>
    public Dictionary<int, ulong> Resolve(ProcessImage image, ulong loadBase, Hotwire.Memory.IMemoryReader memory)
        => Resolve(new TargetSymbols(image, memory), image.Pid, loadBase);

    internal Dictionary<int, ulong> Resolve(TargetSymbols resolver, int pid, ulong loadBase)
    {
        resolver.Prefetch(Elf.DynamicRelocations().Where(r => r.Symbol > 0 && r.Symbol - 1 < DynamicSymbols.Count)
            .Select(r => DynamicSymbols[r.Symbol - 1]).Where(y => y.SectionIndex == 0).Select(y => y.Name));
        var result = new Dictionary<int, ulong>();
        var missing = new List<string>();
        foreach ((ulong _, uint type, int sym, long _) in Elf.DynamicRelocations())
        {
            if (sym == 0 || result.ContainsKey(sym) || sym - 1 >= DynamicSymbols.Count)
            {
                continue;
            }
            ElfSymbol s = DynamicSymbols[sym - 1];
            if (s.SectionIndex != 0)
            {
                result[sym] = loadBase + s.Value;
            }
            else if (resolver.Find(s.Name) is ulong address)
            {
                result[sym] = address;
            }
            else if (s.Binding == ElfFile.STB_WEAK)
            {
                result[sym] = 0;
            }
            else
            {
                missing.Add(s.Name);
            }
        }
        if (missing.Count > 0)
        {
            throw new HotwireException($"{System.IO.Path.GetFileName(Path)} needs {string.Join(", ", missing.Distinct())}, which pid {pid} does not have (not in the patch, the program or its libraries)");
        }
        return result;
    }

    /// <summary>The patch's bytes as they must be in the target at <paramref name="loadBase"/>, relocated.</summary>
    public byte[] Image(ulong loadBase, Dictionary<int, ulong> symbols)
    {
        var image = new byte[Span];
        foreach (ElfSegment seg in Elf.Segments.Where(s => s.Type == ElfFile.PT_LOAD))
        {
            Elf.TryReadVirtual(seg.VirtualAddress, image.AsSpan((int)seg.VirtualAddress, (int)seg.FileSize));
        }
        foreach ((ulong offset, uint type, int sym, long addend) in Elf.DynamicRelocations())
        {
            ulong value = type switch
            {
                R_RELATIVE => loadBase + (ulong)addend,
                R_64 => symbols.GetValueOrDefault(sym) + (ulong)addend,
                R_GLOB_DAT or R_JUMP_SLOT => symbols.GetValueOrDefault(sym),
                _ => 0,
            };
            if (type != R_NONE)
            {
                BitConverter.TryWriteBytes(image.AsSpan((int)offset, 8), value);
            }
        }
        return image;
    }

    /// <summary>Page protections of the loaded patch: (offset, length, PROT_*).</summary>
    public IEnumerable<(ulong Offset, ulong Length, int Prot)> Protections()
    {
        var pages = new Dictionary<ulong, int>();
        foreach (ElfSegment seg in Elf.Segments.Where(s => s.Type == ElfFile.PT_LOAD))
        {
            int prot = ((seg.Flags & 4) != 0 ? 1 : 0) | ((seg.Flags & 2) != 0 ? 2 : 0) | ((seg.Flags & 1) != 0 ? 4 : 0);
            for (ulong p = seg.VirtualAddress & ~4095UL; p < seg.VirtualAddress + seg.MemorySize; p += 4096)
            {
                pages[p] = pages.GetValueOrDefault(p) | prot;
            }
        }
        return pages.OrderBy(kv => kv.Key).Select(kv => (kv.Key, 4096UL, kv.Value));
    }
}

/// <summary>Symbol lookup in a running process, in the order a live patch's references need.</summary>
internal sealed class TargetSymbols
{
    private readonly ProcessImage _image;
    private readonly Hotwire.Memory.IMemoryReader _memory;
    private readonly List<(LoadedModule Module, IReadOnlyList<ElfSymbol> Symtab, IReadOnlyList<ElfSymbol> Dynsym)> _modules;
    private readonly Dictionary<LoadedModule, Dictionary<string, List<ElfSymbol>>> _byName = [];
    private readonly HashSet<string> _scanned = new(StringComparer.Ordinal);

    /// <summary>Indexes the definitions of <paramref name="names"/> in one pass over each module's symbols.</summary>
    public void Prefetch(IEnumerable<string> names)
    {
        var wanted = new HashSet<string>(names.Where(n => !_scanned.Contains(n)), StringComparer.Ordinal);
        if (wanted.Count == 0)
        {
            return;
        }
        foreach ((LoadedModule m, IReadOnlyList<ElfSymbol> symtab, IReadOnlyList<ElfSymbol> dynsym) in _modules)
        {
            if (!_byName.TryGetValue(m, out Dictionary<string, List<ElfSymbol>>? index))
            {
                _byName[m] = index = new Dictionary<string, List<ElfSymbol>>(StringComparer.Ordinal);
            }
            foreach (IReadOnlyList<ElfSymbol> table in new[] { symtab, dynsym })
            {
                foreach (ElfSymbol sym in table)
                {
                    if (sym.SectionIndex != 0 && wanted.Contains(sym.Name))
                    {
                        if (!index.TryGetValue(sym.Name, out List<ElfSymbol>? list))
                        {
                            index[sym.Name] = list = [];
                        }
                        list.Add(sym);
                    }
                }
            }
        }
        _scanned.UnionWith(wanted);
    }

    public TargetSymbols(ProcessImage image, Hotwire.Memory.IMemoryReader memory)
    {
        _image = image;
        _memory = memory;
        string? exe = null;
        try
        {
            exe = System.IO.Path.GetFullPath(new FileInfo($"/proc/{image.Pid}/exe").LinkTarget ?? "");
        }
        catch (IOException)
        {
        }
        _modules = image.Modules.OrderBy(m => m.Path == exe ? 0 : 1)
            .Select(m => (m, m.Elf.ReadSymbols(dynamic: false), m.Elf.ReadSymbols(dynamic: true))).ToList();
    }

    public ulong? Find(string name)
    {
        // The program first (its statics included), then each library's exports.
        foreach ((LoadedModule m, IReadOnlyList<ElfSymbol> symtab, IReadOnlyList<ElfSymbol> dynsym) in _modules)
        {
            foreach (bool locals in new[] { false, true })
            {
                Prefetch([name]);
                var defs = (_byName[m].GetValueOrDefault(name) ?? [])
                    .Where(s => s.SectionIndex != 0 && (locals ? s.Binding == ElfFile.STB_LOCAL : s.Binding != ElfFile.STB_LOCAL))
                    .Select(s => (s.Value, s.Type)).Distinct().ToList();
                if (defs.Count > 1 && locals)
                {
                    throw new HotwireException($"{name} is ambiguous in {m.Name}: {defs.Count} static definitions; rename it in the patch's source or reach it another way");
                }
                if (defs.Count > 0)
                {
                    return defs[0].Type == ElfFile.STT_GNU_IFUNC ? ResolvedIfunc(name) : m.Bias + defs[0].Value;
                }
            }
        }
        return null;
    }

    // An IFUNC's address is what its resolver chose: find it in a GOT slot the dynamic linker filled.
    private ulong? ResolvedIfunc(string name)
    {
        Span<byte> word = stackalloc byte[8];
        foreach ((LoadedModule m, _, _) in _modules)
        {
            foreach ((ulong slot, string _) in m.Elf.ImportSlots(new HashSet<string> { name }))
            {
                if (_memory.TryRead(slot + m.Bias, word))
                {
                    ulong value = BitConverter.ToUInt64(word);
                    if (_modules.Any(x => x.Module != m && value >= x.Module.Start && value < x.Module.End))
                    {
                        return value;
                    }
                }
            }
        }
        throw new HotwireException($"{name} is chosen at run time (an IFUNC) and nothing in pid {_image.Pid} has resolved it yet; call a different function from the patch");
    }
}
