namespace Hotwire.Elf;

/// <summary>
/// A symbol table (<c>.symtab</c> or <c>.dynsym</c>) read in place from the file's bytes: fields are decoded
/// when asked for, and a name is made a string only by <see cref="Name"/>. Index 0 is the first real symbol
/// (the table's null entry is left out). Offsets into the string table are checked against it.
/// </summary>
public sealed class ElfSymbolTable
{
    private const int EntrySize = 24; // Elf64_Sym

    private readonly ReadOnlyMemory<byte> _entries;
    private readonly ReadOnlyMemory<byte> _strings;

    internal ElfSymbolTable(ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> strings)
    {
        _entries = table.Length >= EntrySize ? table[EntrySize..] : default;
        _strings = strings;
    }

    public int Count => _entries.Length / EntrySize;

    public uint NameOffset(int index) => ElfFile.U32(Entry(index), 0);

    /// <summary>The name; empty when the symbol has none (or its offset lies outside the string table).</summary>
    public string Name(int index) => ElfFile.CString(_strings.Span, NameOffset(index));

    public bool HasName(int index)
    {
        uint offset = NameOffset(index);
        return offset < _strings.Length && _strings.Span[(int)offset] != 0;
    }

    public byte Type(int index) => (byte)(Entry(index)[4] & 0xf);

    public byte Binding(int index) => (byte)(Entry(index)[4] >> 4);

    public ushort SectionIndex(int index) => ElfFile.U16(Entry(index), 6);

    public ulong Value(int index) => ElfFile.U64(Entry(index), 8);

    public ulong Size(int index) => ElfFile.U64(Entry(index), 16);

    private ReadOnlySpan<byte> Entry(int index) => _entries.Span.Slice(index * EntrySize, EntrySize);
}
