using Hotwire.Elf;

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

    private sealed class ModuleTable(LoadedModule module)
    {
        private readonly FunctionSymbols _functions = FunctionSymbols.Of(module.Elf);

        public LoadedModule Module { get; } = module;

        public bool TryRange(ulong linkAddress, out ulong start, out ulong end)
        {
            int i = _functions.AtOrBefore(linkAddress);
            start = i >= 0 ? _functions.Start(i) : 0;
            end = i >= 0 ? start + Math.Max(_functions.Size(i), 1) : 0;
            return i >= 0 && linkAddress < end;
        }

        public bool TryFind(ulong linkAddress, out string? symbol, out ulong offset)
        {
            if (TryRange(linkAddress, out ulong start, out _))
            {
                symbol = _functions.Name(_functions.AtOrBefore(linkAddress));
                offset = linkAddress - start;
                return true;
            }
            symbol = null;
            offset = 0;
            return false;
        }
    }
}
