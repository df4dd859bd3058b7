namespace Hotwire.Injection;

/// <summary>
/// The dynamic linker's debugger rendezvous: <c>_dl_debug_state</c> (r_debug.r_brk), which it calls
/// around every load and unload, and <c>_r_debug</c>, whose r_state says whether the link map is
/// consistent. Found in the linker's .dynsym at its load address (AT_BASE).
/// </summary>
public static class LinkerRendezvous
{
    public const int RT_CONSISTENT = 0;

    /// <summary>r_debug.r_state: struct r_debug { int r_version; link_map *r_map; ElfW(Addr) r_brk; r_state; ... }</summary>
    public const int RStateOffset = 24;

    /// <summary>The rendezvous' address and r_debug's, from the dynamic linker's symbols; null for a static program.</summary>
    public static (ulong Brk, ulong RDebug)? Find(int pid)
    {
        ulong? at;
        try
        {
            at = ProgramLauncher.Aux(pid, Sys.AT_BASE);
        }
        catch (IOException)
        {
            return null;        // the process is exiting
        }
        if (at is not ulong interpreterBase || interpreterBase == 0)
        {
            return null;
        }
        MemoryMapping ld = ProcMaps.Read(pid).FirstOrDefault(m => m.Start == interpreterBase && m.Offset == 0);
        if (ld.Path is null || !ld.IsFileBacked)
        {
            return null;
        }
        IReadOnlyList<Elf.ElfSymbol> symbols = Elf.ElfFile.Load($"/proc/{pid}/root{ld.Path}").ReadSymbols(dynamic: true);
        Elf.ElfSymbol state = symbols.FirstOrDefault(s => s.Name == "_dl_debug_state" && s.Value != 0);
        Elf.ElfSymbol rDebug = symbols.FirstOrDefault(s => s.Name == "_r_debug" && s.Value != 0);
        if (state.Name is null || rDebug.Name is null)
        {
            return null;
        }
        return (interpreterBase + state.Value, interpreterBase + rDebug.Value);
    }
}
