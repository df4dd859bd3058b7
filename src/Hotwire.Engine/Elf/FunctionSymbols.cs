namespace Hotwire.Elf;

/// <summary>
/// The function symbols of one ELF file by start address, as every part of Hotwire names functions
/// (site discovery, the symbolizer, the modules a recording carries): from .symtab, else .dynsym;
/// STT_FUNC and STT_GNU_IFUNC, defined, named; where several start at one address, global names win
/// over weak over local aliases, and among equals the first in the table.
/// </summary>
/// <remarks>
/// Sorted arrays, not a dictionary: the linker writes global symbols in its hash table's order, so a
/// dictionary's entries were visited at random, a cache miss per site on 50,000 functions. A name is
/// decoded and demangled only when asked for, so the strings that `hotwire ls` prints lie in memory
/// in the order it prints them.
/// </remarks>
public sealed class FunctionSymbols
{
    private readonly ElfSymbolTable _table;
    private readonly ulong[] _starts; // ascending, each address once
    private readonly int[] _symbols;  // the symbol (index in _table) that names each start

    private FunctionSymbols(ElfSymbolTable table, ulong[] starts, int[] symbols, bool fromSymtab)
    {
        _table = table;
        _starts = starts;
        _symbols = symbols;
        FromSymtab = fromSymtab;
    }

    /// <summary>False when the file has no .symtab (stripped): the names are the exported ones only.</summary>
    public bool FromSymtab { get; }

    public int Count => _starts.Length;

    /// <summary>The link-time start of function <paramref name="i"/> (ascending in i).</summary>
    public ulong Start(int i) => _starts[i];

    public ulong Size(int i) => _table.Size(_symbols[i]);

    /// <summary>The demangled name, without a symbol version (<c>@GLIBC_2.2.5</c>).</summary>
    public string Name(int i) => CxxAbi.Demangle(StripVersion(_table.Name(_symbols[i])));

    /// <summary>The function starting exactly at <paramref name="address"/>, or −1.</summary>
    public int At(ulong address)
    {
        int i = Array.BinarySearch(_starts, address);
        return i >= 0 ? i : -1;
    }

    /// <summary>The last function starting at or before <paramref name="address"/>, or −1 (its size says whether it covers it).</summary>
    public int AtOrBefore(ulong address)
    {
        int i = Array.BinarySearch(_starts, address);
        return i >= 0 ? i : ~i - 1;
    }

    /// <summary>Global 0, weak 1, local 2: which of two aliases names a function.</summary>
    public static int Rank(byte binding) => binding switch
    {
        ElfFile.STB_GLOBAL => 0,
        ElfFile.STB_WEAK => 1,
        _ => 2,
    };

    public static FunctionSymbols Of(ElfFile elf)
    {
        ElfSymbolTable table = elf.SymbolTable(dynamic: false);
        bool fromSymtab = table.Count > 0;
        if (!fromSymtab)
        {
            table = elf.SymbolTable(dynamic: true);
        }
        var starts = new ulong[table.Count];
        var symbols = new int[table.Count];
        int n = 0;
        for (int i = 0; i < table.Count; i++)
        {
            byte type = table.Type(i);
            if ((type == ElfFile.STT_FUNC || type == ElfFile.STT_GNU_IFUNC) && table.SectionIndex(i) != 0 && table.HasName(i))
            {
                (starts[n], symbols[n]) = (table.Value(i), i);
                n++;
            }
        }
        Array.Sort(starts, symbols, 0, n);

        // Aliases are now side by side (in no particular order: the sort is not stable): keep the best of each run.
        int count = 0;
        for (int i = 0; i < n;)
        {
            int best = symbols[i];
            int next = i + 1;
            for (; next < n && starts[next] == starts[i]; next++)
            {
                if ((Rank(table.Binding(symbols[next])), symbols[next]).CompareTo((Rank(table.Binding(best)), best)) < 0)
                {
                    best = symbols[next];
                }
            }
            (starts[count], symbols[count]) = (starts[i], best);
            count++;
            i = next;
        }
        return new FunctionSymbols(table, starts[..count], symbols[..count], fromSymtab);
    }

    private static string StripVersion(string name)
    {
        int at = name.IndexOf('@');
        return at > 0 ? name[..at] : name;
    }
}
