using Hotwire.Elf;
using Hotwire.Interop;
using Hotwire.Procfs;

namespace Hotwire.Symbols;

/// <summary>Turns a runtime address into <c>module!symbol+0xoff</c>.</summary>
public sealed class Symbolizer
{
    private readonly ModuleTable[] _modules;

    public Symbolizer(IEnumerable<LoadedModule> modules)
    {
        _modules = modules.OrderBy(m => m.Start).Select(m => new ModuleTable(m)).ToArray();
    }

    /// <summary>The symbol covering <paramref name="address"/>, with the module it is in.</summary>
    public bool TryResolve(ulong address, out string module, out string? symbol, out ulong offset)
    {
        foreach (ModuleTable t in _modules)
        {
            if (address >= t.Module.Start && address < t.Module.End)
            {
                module = t.Module.Name;
                return t.TryFind(address - t.Module.Bias, out symbol, out offset) || SetModuleOffset(address - t.Module.Start, out symbol, out offset);
            }
        }
        module = "";
        symbol = null;
        offset = 0;
        return false;

        static bool SetModuleOffset(ulong off, out string? symbol, out ulong offset)
        {
            symbol = null;
            offset = off;
            return true;
        }
    }

    /// <summary>The runtime [start, end) of the function covering <paramref name="address"/>.</summary>
    public bool TryRange(ulong address, out ulong start, out ulong end)
    {
        foreach (ModuleTable t in _modules)
        {
            if (address >= t.Module.Start && address < t.Module.End && t.TryRange(address - t.Module.Bias, out start, out end))
            {
                start += t.Module.Bias;
                end += t.Module.Bias;
                return true;
            }
        }
        start = end = 0;
        return false;
    }

    public string Format(ulong address)
    {
        if (!TryResolve(address, out string module, out string? symbol, out ulong offset))
        {
            return $"0x{address:x}";
        }
        string where = symbol is null ? module : $"{module}!{symbol}";
        return offset == 0 ? where : $"{where}+0x{offset:x}";
    }

    private sealed class ModuleTable
    {
        private readonly ulong[] _starts;
        private readonly ulong[] _ends;
        private readonly string[] _names;

        public ModuleTable(LoadedModule module)
        {
            Module = module;
            var symbols = new List<ElfSymbol>(module.Elf.ReadSymbols(dynamic: false));
            symbols.AddRange(module.Elf.ReadSymbols(dynamic: true));
            var funcs = symbols
                .Where(s => (s.Type == ElfFile.STT_FUNC || s.Type == ElfFile.STT_GNU_IFUNC) && s.SectionIndex != 0 && s.Name.Length > 0)
                .GroupBy(s => s.Value)
                .Select(g => g.OrderBy(s => s.Binding == ElfFile.STB_GLOBAL ? 0 : 1).First())
                .OrderBy(s => s.Value)
                .ToArray();
            _starts = funcs.Select(s => s.Value).ToArray();
            _ends = funcs.Select(s => s.Value + Math.Max(s.Size, 1)).ToArray();
            _names = funcs.Select(s => s.Name).ToArray();
        }

        public LoadedModule Module { get; }

        public bool TryRange(ulong linkAddress, out ulong start, out ulong end)
        {
            int i = Array.BinarySearch(_starts, linkAddress);
            i = i < 0 ? ~i - 1 : i;
            start = i >= 0 ? _starts[i] : 0;
            end = i >= 0 ? _ends[i] : 0;
            return i >= 0 && linkAddress < _ends[i];
        }

        public bool TryFind(ulong linkAddress, out string? symbol, out ulong offset)
        {
            int i = Array.BinarySearch(_starts, linkAddress);
            if (i < 0)
            {
                i = ~i - 1;
            }
            if (i >= 0 && linkAddress < _ends[i])
            {
                string name = _names[i];
                int at = name.IndexOf('@');
                symbol = CxxAbi.Demangle(at > 0 ? name[..at] : name);
                offset = linkAddress - _starts[i];
                return true;
            }
            symbol = null;
            offset = 0;
            return false;
        }
    }
}
