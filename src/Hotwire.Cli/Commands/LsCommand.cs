using System.CommandLine;
using System.Text;
using Hotwire.Elf;
using Hotwire.Memory;
using Hotwire.Patching;
using Hotwire.Procfs;

namespace Hotwire.Cli.Commands;

/// <summary><c>hotwire ls</c>: the traceable functions, like ftrace's available_filter_functions.</summary>
public static class LsCommand
{
    public static Command Create()
    {
        var pid = new Option<int?>("--pid", "-p") { Description = "List the functions of this running process (all its modules)", CustomParser = OptionValues.ProcessId };
        var addrs = new Option<bool>("--addrs") { Description = "Also show each site's address and kind" };
        var operands = new Argument<string[]>("FILE|GLOB")
        {
            Description = "Without --pid: the program or shared library, then globs. With --pid: globs only. "
                + "Globs as in ftrace filters: *, ?, [...]; a leading ! removes; GLOB:mod:MODULE limits to a module",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var command = new Command("ls", "List the functions that can be traced or patched (one per line: name [module])")
        {
            pid, addrs, operands,
        };
        command.SetAction(result => (int)Run(result.GetValue(pid), result.GetValue(operands) ?? [], result.GetValue(addrs)));
        return command;
    }

    public static ExitCode Run(int? pid, string[] operands, bool showAddresses)
    {
        IReadOnlyList<PatchSite> sites;
        IEnumerable<string> globs;
        Dictionary<ulong, byte[]>? live = null;
        if (pid is int p)
        {
            globs = operands;
            ProcessImage image = ProcessImage.Load(p);
            sites = image.AllSites.ToList();
            if (sites.Count == 0)
            {
                throw new HotwireException(
                    $"pid {p} has no patch sites in its {image.Modules.Count} modules: {SiteDiscovery.HowToAddSites}");
            }
            foreach (LoadedModule m in image.Modules.Where(m => m.Sites.Count > 0 && !m.LinkSites.HasSymbols))
            {
                WarnStripped(m.Path);
            }
            if (showAddresses)
            {
                using ProcessMemory memory = ProcessMemory.Open(p);
                live = ProcessImage.ReadLiveBytes(memory, sites);
            }
        }
        else
        {
            if (operands.Length == 0)
            {
                throw new UsageException("give a program or shared library to list (hotwire ls FILE), or a running process (hotwire ls --pid N)");
            }
            string file = operands[0];
            globs = operands.Skip(1);
            ElfFile elf = ElfFile.Load(file);
            if (elf.Type == ElfType.Relocatable)
            {
                throw new HotwireException($"{file} is an object file; give the linked program or shared library");
            }
            ModuleSites moduleSites = SiteDiscovery.Scan(elf);
            sites = moduleSites.Sites;
            if (sites.Count == 0)
            {
                throw new HotwireException($"{file} has no patch sites: {SiteDiscovery.HowToAddSites}");
            }
            if (!moduleSites.HasSymbols)
            {
                WarnStripped(file);
            }
        }

        List<PatchSite> selected = new FunctionFilter(globs).Select(sites);
        // Encoded as it is written, through one 64 KiB buffer, as nm's stdio does: the listing of
        // 50,000 functions is never held whole (as chars, a string, then bytes, all for the GC).
        using var output = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(encoderShouldEmitUTF8Identifier: false), 1 << 16);
        string module = "", moduleName = "";
        foreach (PatchSite s in selected)
        {
            if (showAddresses)
            {
                output.Write(s.Address.ToString("x16"));
                output.Write(' ');
                output.Write(Label(s, live).PadRight(8));
                output.Write(' ');
            }
            if (!ReferenceEquals(s.Module, module))
            {
                // ModuleName makes a new string on each call; the sites of a module share its path.
                (module, moduleName) = (s.Module, s.ModuleName);
            }
            output.Write(s.Function);
            output.Write(" [");
            output.Write(moduleName);
            output.Write("]\n");
        }
        return ExitCode.Success;
    }

    private static string Label(PatchSite site, Dictionary<ulong, byte[]>? live)
    {
        if (live is null || !live.TryGetValue(site.Address, out byte[]? now) || now.AsSpan().SequenceEqual(site.OriginalBytes))
        {
            return site.Kind.Label();
        }
        // The process's bytes differ from the file's: someone has rewritten the site.
        return now[0] switch
        {
            0xcc => "int3",
            0xe8 => "call",
            0xe9 => "jmp",
            _ => SiteKinds.Classify(now) == SiteKind.Nop5 ? "nop5" : "changed",
        };
    }

    private static void WarnStripped(string path)
        => Console.Error.WriteLine(
            $"hotwire: warning: {path} has no symbol table (stripped): its functions are listed by address; build without stripping to see names");
}
