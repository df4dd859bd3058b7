using System.Buffers.Binary;
using System.Text;

namespace Hotwire.Elf;

public enum ElfType : ushort
{
    None = 0,
    Relocatable = 1,
    Executable = 2,
    SharedObject = 3,
    Core = 4,
}

public readonly record struct ElfSection(
    int Index, string Name, uint Type, ulong Flags, ulong Address, ulong Offset, ulong Size, uint Link, uint Info, ulong EntrySize);

public readonly record struct ElfSegment(uint Type, uint Flags, ulong Offset, ulong VirtualAddress, ulong FileSize, ulong MemorySize, ulong Align);

public readonly record struct ElfSymbol(string Name, ulong Value, ulong Size, byte Type, byte Binding, ushort SectionIndex);

/// <summary>
/// A small ELF64 little-endian reader over <see cref="ReadOnlyMemory{T}"/>.
/// Written here rather than taken from LibObjectFile or ELFSharp (both tried against our needs):
/// LibObjectFile builds a full mutable object model — costly for the 50,000-function binaries that
/// `hotwire ls` must list in well under a second — and ELFSharp reads files and streams only; neither
/// applies the RELATIVE/RELR relocations that give `__patchable_function_entries` its values in PIE
/// and shared objects. Hotwire needs headers, sections, symbols and relocations, nothing more.
/// Every size and offset read from the file is checked against the file before use.
/// </summary>
public sealed class ElfFile
{
    public const ushort EM_X86_64 = 62;
    public const uint SHT_SYMTAB = 2;
    public const uint SHT_RELA = 4;
    public const uint SHT_NOBITS = 8;
    public const uint SHT_DYNSYM = 11;
    public const uint SHT_RELR = 19;
    public const uint PT_LOAD = 1;
    public const uint PT_DYNAMIC = 2;
    public const byte STT_FUNC = 2;
    public const byte STT_GNU_IFUNC = 10;
    public const byte STB_LOCAL = 0;
    public const byte STB_GLOBAL = 1;
    public const byte STB_WEAK = 2;
    public const uint R_X86_64_64 = 1;
    public const uint R_X86_64_RELATIVE = 8;

    private const int MaxSegments = 1 << 12;

    private readonly ReadOnlyMemory<byte> _data;
    private Dictionary<ulong, ulong>? _relocatedWords;

    // The PT_LOAD segments as an array: TryReadVirtual runs a few times per patch site (150,000 times
    // for `hotwire ls` of 50,000 functions), and a foreach over an IReadOnlyList boxes its enumerator.
    private readonly ElfSegment[] _loadSegments;

    private ElfFile(ReadOnlyMemory<byte> data, string name, ElfType type, IReadOnlyList<ElfSection> sections, IReadOnlyList<ElfSegment> segments)
    {
        _data = data;
        Name = name;
        Type = type;
        Sections = sections;
        Segments = segments;
        _loadSegments = segments.Where(s => s.Type == PT_LOAD).ToArray();
    }

    public string Name { get; }

    public ElfType Type { get; }

    public IReadOnlyList<ElfSection> Sections { get; }

    public IReadOnlyList<ElfSegment> Segments { get; }

    /// <summary>e_entry: where a program starts (libraries: usually 0).</summary>
    public ulong EntryPoint => U64(_data.Span, 24);

    /// <summary>The file has a PT_INTERP segment: a dynamically linked program, not a library.</summary>
    public bool IsProgram => Segments.Any(s => s.Type == 3 /* PT_INTERP */);

    /// <summary>Reads a file whole and parses it; every problem is a one-line <see cref="HotwireException"/>.</summary>
    public static ElfFile Load(string path)
    {
        byte[] bytes;
        try
        {
            var info = new FileInfo(path);
            // Decided from stat alone: a FIFO or a device is never opened (reading one can block forever).
            string? notAFile = Interop.Libc.FileType(path) switch
            {
                -1 => null,
                Interop.Libc.S_IFREG => null,
                Interop.Libc.S_IFDIR => "a directory",
                Interop.Libc.S_IFCHR => "a character device",
                Interop.Libc.S_IFBLK => "a block device",
                Interop.Libc.S_IFIFO => "a named pipe (FIFO)",
                Interop.Libc.S_IFSOCK => "a socket",
                _ => "not a regular file",
            };
            if (notAFile is not null)
            {
                throw new HotwireException($"{path} is {notAFile}, not a program or shared library");
            }
            if (!info.Exists)
            {
                throw new HotwireException($"{path}: no such file");
            }
            if (info.Length > int.MaxValue)
            {
                throw new HotwireException($"{path} is larger than 2 GiB; Hotwire does not read ELF files that large");
            }
            bytes = File.ReadAllBytes(path);
        }
        catch (UnauthorizedAccessException)
        {
            throw new HotwireException($"{path}: permission denied (cannot read the file)");
        }
        catch (IOException e)
        {
            throw new HotwireException($"{path}: cannot read: {e.Message}");
        }
        return Parse(bytes, path);
    }

    /// <summary>True when the bytes start with the ELF magic.</summary>
    public static bool HasElfMagic(ReadOnlySpan<byte> head)
        => head.Length >= 4 && head[0] == 0x7f && head[1] == (byte)'E' && head[2] == (byte)'L' && head[3] == (byte)'F';

    public static ElfFile Parse(ReadOnlyMemory<byte> data, string name)
    {
        ReadOnlySpan<byte> d = data.Span;
        if (!HasElfMagic(d))
        {
            throw new HotwireException($"{name} is not an ELF file (give a compiled x86-64 program or shared library)");
        }
        if (d.Length < 64)
        {
            throw new HotwireException($"{name} is a truncated ELF file");
        }
        if (d[4] != 2)
        {
            throw new HotwireException($"{name} is a {(d[4] == 1 ? "32-bit" : "non-64-bit")} ELF file; Hotwire supports 64-bit x86-64 programs only");
        }
        if (d[5] != 1)
        {
            throw new HotwireException($"{name} is a big-endian ELF file; Hotwire supports x86-64 programs only");
        }
        ushort machine = U16(d, 18);
        if (machine != EM_X86_64)
        {
            throw new HotwireException($"{name} is an ELF file for {MachineName(machine)}, not x86-64; Hotwire supports x86-64 programs only");
        }
        var type = (ElfType)U16(d, 16);
        ulong phoff = U64(d, 32);
        ulong shoff = U64(d, 40);
        ushort phentsize = U16(d, 54);
        ushort phnum = U16(d, 56);
        ushort shentsize = U16(d, 58);
        ushort shnum = U16(d, 60);
        ushort shstrndx = U16(d, 62);

        var segments = new List<ElfSegment>();
        if (phnum > 0)
        {
            if (phentsize < 56 || phnum > MaxSegments || !Fits(d, phoff, (ulong)phnum * phentsize))
            {
                throw new HotwireException($"{name} is a damaged ELF file (program headers out of bounds)");
            }
            for (int i = 0; i < phnum; i++)
            {
                ReadOnlySpan<byte> p = d.Slice((int)(phoff + (ulong)(i * phentsize)), 56);
                segments.Add(new ElfSegment(U32(p, 0), U32(p, 4), U64(p, 8), U64(p, 16), U64(p, 32), U64(p, 40), U64(p, 48)));
            }
        }

        var sections = new List<ElfSection>();
        if (shnum > 0 && shoff != 0)
        {
            if (shentsize < 64 || !Fits(d, shoff, (ulong)shnum * shentsize))
            {
                throw new HotwireException($"{name} is a damaged ELF file (section headers out of bounds)");
            }
            ReadOnlySpan<byte> names = default;
            if (shstrndx < shnum)
            {
                ReadOnlySpan<byte> sh = d.Slice((int)(shoff + (ulong)(shstrndx * shentsize)), 64);
                ulong off = U64(sh, 24), size = U64(sh, 32);
                if (Fits(d, off, size))
                {
                    names = d.Slice((int)off, (int)size);
                }
            }
            for (int i = 0; i < shnum; i++)
            {
                ReadOnlySpan<byte> s = d.Slice((int)(shoff + (ulong)(i * shentsize)), 64);
                sections.Add(new ElfSection(
                    i, CString(names, U32(s, 0)), U32(s, 4), U64(s, 8), U64(s, 16), U64(s, 24), U64(s, 32), U32(s, 40), U32(s, 44), U64(s, 56)));
            }
        }
        return new ElfFile(data, name, type, sections, segments);
    }

    public ElfSection? FindSection(string name)
    {
        foreach (ElfSection s in Sections)
        {
            if (s.Name == name)
            {
                return s;
            }
        }
        return null;
    }

    /// <summary>The file bytes of a section; empty for NOBITS or a section that lies outside the file.</summary>
    public ReadOnlySpan<byte> SectionData(ElfSection section) => SectionMemory(section).Span;

    private ReadOnlyMemory<byte> SectionMemory(ElfSection section)
    {
        if (section.Type == SHT_NOBITS || !Fits(_data.Span, section.Offset, section.Size))
        {
            return default;
        }
        return _data.Slice((int)section.Offset, (int)section.Size);
    }

    /// <summary>Reads bytes at a link-time virtual address from the file image of its PT_LOAD segment.</summary>
    public bool TryReadVirtual(ulong address, Span<byte> destination)
    {
        foreach (ElfSegment seg in _loadSegments)
        {
            if (address >= seg.VirtualAddress && address - seg.VirtualAddress < seg.FileSize)
            {
                ulong delta = address - seg.VirtualAddress;
                if ((ulong)destination.Length > seg.FileSize - delta)
                {
                    return false;
                }
                ulong offset = seg.Offset + delta;
                if (!Fits(_data.Span, offset, (ulong)destination.Length))
                {
                    return false;
                }
                _data.Span.Slice((int)offset, destination.Length).CopyTo(destination);
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// The load bias of this image when the page at file offset <paramref name="mappedOffset"/> is
    /// mapped at <paramref name="mappedStart"/> (as /proc/PID/maps shows): runtime = link-time + bias.
    /// </summary>
    public bool TryComputeBias(ulong mappedStart, ulong mappedOffset, out ulong bias)
    {
        foreach (ElfSegment seg in _loadSegments)
        {
            if ((seg.Offset & ~0xfffUL) <= mappedOffset && mappedOffset < seg.Offset + Math.Max(seg.FileSize, 1))
            {
                ulong linkPage = (seg.VirtualAddress & ~0xfffUL) + (mappedOffset - (seg.Offset & ~0xfffUL));
                bias = mappedStart - linkPage;
                return true;
            }
        }
        bias = 0;
        return false;
    }

    private IReadOnlyList<ElfSymbol>? _symtab, _dynsym;

    /// <summary>Symbols of <c>.symtab</c> (or <c>.dynsym</c> with <paramref name="dynamic"/>), read once (do not modify the list).</summary>
    public IReadOnlyList<ElfSymbol> ReadSymbols(bool dynamic) => dynamic
        ? _dynsym ??= ParseSymbols(dynamic: true)
        : _symtab ??= ParseSymbols(dynamic: false);

    /// <summary>
    /// <c>.symtab</c> (or <c>.dynsym</c> with <paramref name="dynamic"/>) read in place, each name only when asked
    /// for: for a caller that needs the names of some symbols only (<see cref="ReadSymbols"/> decodes them all).
    /// </summary>
    public ElfSymbolTable SymbolTable(bool dynamic)
    {
        ElfSection? table = FindSection(dynamic ? ".dynsym" : ".symtab");
        if (table is not { } tab || tab.Type != (dynamic ? SHT_DYNSYM : SHT_SYMTAB) || tab.Link >= Sections.Count)
        {
            return new ElfSymbolTable(default, default);
        }
        return new ElfSymbolTable(SectionMemory(tab), SectionMemory(Sections[(int)tab.Link]));
    }

    private List<ElfSymbol> ParseSymbols(bool dynamic)
    {
        ElfSymbolTable table = SymbolTable(dynamic);
        var result = new List<ElfSymbol>(table.Count);
        var names = new Dictionary<uint, string>(table.Count); // names shared by several symbols are decoded once
        for (int i = 0; i < table.Count; i++)
        {
            ref string? name = ref CollectionsMarshal.GetValueRefOrAddDefault(names, table.NameOffset(i), out _); // one lookup, not two
            name ??= table.Name(i);
            result.Add(new ElfSymbol(name, table.Value(i), table.Size(i), table.Type(i), table.Binding(i), table.SectionIndex(i)));
        }
        return result;
    }

    /// <summary>
    /// The 64-bit value a word at <paramref name="address"/> holds once loaded: the addend of its
    /// R_X86_64_RELATIVE (RELA or RELR) relocation when it has one — in RELA the addend, not the file
    /// bytes, is authoritative — else the file bytes.
    /// </summary>
    public bool TryReadLoadedWord(ulong address, out ulong value)
    {
        _relocatedWords ??= BuildRelocatedWords();
        if (_relocatedWords.TryGetValue(address, out value))
        {
            return true;
        }
        Span<byte> word = stackalloc byte[8];
        if (TryReadVirtual(address, word))
        {
            value = BinaryPrimitives.ReadUInt64LittleEndian(word);
            return true;
        }
        value = 0;
        return false;
    }

    /// <summary>Every dynamic relocation (RELA sections that are loaded): where, type, symbol index in .dynsym, addend.</summary>
    public List<(ulong Offset, uint Type, int Symbol, long Addend)> DynamicRelocations()
    {
        var result = new List<(ulong, uint, int, long)>();
        foreach (ElfSection s in Sections)
        {
            if (s.Type != SHT_RELA || (s.Flags & 2) == 0)
            {
                continue;
            }
            ReadOnlySpan<byte> rela = SectionData(s);
            for (int off = 0; off + 24 <= rela.Length; off += 24)
            {
                ulong info = U64(rela, off + 8);
                result.Add((U64(rela, off), (uint)info, (int)(info >> 32), (long)U64(rela, off + 16)));
            }
        }
        return result;
    }

    public const uint R_X86_64_GLOB_DAT = 6;
    public const uint R_X86_64_JUMP_SLOT = 7;

    /// <summary>
    /// The GOT slots (link-time addresses) through which this module calls or loads one of
    /// <paramref name="names"/>: its GLOB_DAT and JUMP_SLOT relocations against those symbols.
    /// </summary>
    public List<(ulong Slot, string Name)> ImportSlots(IReadOnlySet<string> names)
    {
        IReadOnlyList<ElfSymbol> dynsyms = ReadSymbols(dynamic: true);
        return DynamicRelocations()
            .Where(r => r.Type is R_X86_64_GLOB_DAT or R_X86_64_JUMP_SLOT && r.Symbol > 0 && r.Symbol - 1 < dynsyms.Count && names.Contains(dynsyms[r.Symbol - 1].Name))
            .Select(r => (r.Offset, dynsyms[r.Symbol - 1].Name))
            .ToList();
    }

    private Dictionary<ulong, ulong> BuildRelocatedWords()
    {
        var words = new Dictionary<ulong, ulong>();
        IReadOnlyList<ElfSymbol>? dynsyms = null;
        foreach (ElfSection s in Sections)
        {
            if (s.Type == SHT_RELA && (s.Flags & 2) != 0) // SHF_ALLOC: the dynamic relocations
            {
                ReadOnlySpan<byte> rela = SectionData(s);
                for (int off = 0; off + 24 <= rela.Length; off += 24)
                {
                    ulong where = U64(rela, off);
                    ulong info = U64(rela, off + 8);
                    ulong addend = U64(rela, off + 16);
                    uint type = (uint)info;
                    if (type == R_X86_64_RELATIVE)
                    {
                        words[where] = addend;
                    }
                    else if (type == R_X86_64_64)
                    {
                        dynsyms ??= ReadSymbols(dynamic: true);
                        int symIndex = (int)(info >> 32);
                        if (symIndex > 0 && symIndex - 1 < dynsyms.Count && dynsyms[symIndex - 1].SectionIndex != 0)
                        {
                            words[where] = dynsyms[symIndex - 1].Value + addend;
                        }
                    }
                }
            }
            else if (s.Type == SHT_RELR)
            {
                ReadRelr(SectionData(s), words);
            }
        }
        return words;
    }

    // RELR: an address entry relocates one word, then bitmap entries relocate the following 63 words each.
    private void ReadRelr(ReadOnlySpan<byte> relr, Dictionary<ulong, ulong> words)
    {
        ulong next = 0;
        Span<byte> word = stackalloc byte[8];
        for (int off = 0; off + 8 <= relr.Length; off += 8)
        {
            ulong entry = U64(relr, off);
            if ((entry & 1) == 0)
            {
                AddFromFile(entry, word, words);
                next = entry + 8;
            }
            else
            {
                for (int bit = 1; bit < 64; bit++)
                {
                    if ((entry >> bit & 1) != 0)
                    {
                        AddFromFile(next + (ulong)(bit - 1) * 8, word, words);
                    }
                }
                next += 63 * 8;
            }
        }
    }

    // RELR keeps the addend in place: the file word is the link-time value.
    private void AddFromFile(ulong where, Span<byte> word, Dictionary<ulong, ulong> words)
    {
        if (TryReadVirtual(where, word))
        {
            words[where] = BinaryPrimitives.ReadUInt64LittleEndian(word);
        }
    }

    private static bool Fits(ReadOnlySpan<byte> d, ulong offset, ulong size)
        => offset <= (ulong)d.Length && size <= (ulong)d.Length - offset;

    internal static string CString(ReadOnlySpan<byte> table, uint offset)
    {
        if (offset >= table.Length)
        {
            return "";
        }
        ReadOnlySpan<byte> rest = table[(int)offset..];
        int end = rest.IndexOf((byte)0);
        return Encoding.UTF8.GetString(end < 0 ? rest : rest[..end]);
    }

    private static string MachineName(ushort machine) => machine switch
    {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "ARM",
        183 => "AArch64 (ARM64)",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => $"machine type {machine}",
    };

    internal static ushort U16(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt16LittleEndian(d[o..]);

    internal static uint U32(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt32LittleEndian(d[o..]);

    internal static ulong U64(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt64LittleEndian(d[o..]);
}
