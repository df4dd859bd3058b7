using System.CommandLine;
using System.Text;
using Hotwire.Elf;
using Hotwire.Memory;
using Hotwire.Patching;
using Hotwire.Procfs;
using Hotwire.Symbols;

namespace Hotwire.Cli.Commands;

/// <summary><c>hotwire ls</c>: the traceable functions, like ftrace's available_filter_functions.</summary>
public static class LsCommand
{
    public static Command Create()
    {
        var pid = new Option<int?>("--pid", "-p") { Description = "List the functions of this running process (all its modules)", CustomParser = OptionValues.ProcessId };
        var addrs = new Option<bool>("--addrs") { Description = "Also show each site's address and kind" };
        var all = new Option<bool>("--all", "-a")
        {
            Description = "Every function, with or without a compiler site (from .symtab, a debug file, or .dynsym and .eh_frame), "
                + "each with how its entry can be hooked: site, relocatable (and how), or refused (and why); a count by kind on stderr",
        };
        var operands = new Argument<string[]>("FILE|GLOB")
        {
            Description = "Without --pid: the program or shared library, then globs. With --pid: globs only. "
                + "Globs as in ftrace filters: *, ?, [...]; a leading ! removes; GLOB:mod:MODULE limits to a module",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var command = new Command("ls", "List the functions that can be traced or patched (one per line: name [module])")
        {
            pid, addrs, all, operands,
        };
        command.SetAction(result => (int)(result.GetValue(all)
            ? RunAll(result.GetValue(pid), result.GetValue(operands) ?? [], result.GetValue(addrs))
            : Run(result.GetValue(pid), result.GetValue(operands) ?? [], result.GetValue(addrs))));
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
            (string file, ElfFile elf) = LoadFile(operands, "");
            globs = operands.Skip(1);
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

    /// <summary>
    /// <c>hotwire ls --all</c>: every function of the file (or of each module of the process), with the
    /// way its entry can be hooked (<see cref="EntryClassifier"/>), then a one-line count by kind and
    /// refusal reason on stderr (the coverage table of any-binary tracing).
    /// </summary>
    public static ExitCode RunAll(int? pid, string[] operands, bool showAddresses)
    {
        var files = new List<(string Path, ElfFile Elf, IReadOnlyList<PatchSite> Sites, ulong Bias)>();
        IEnumerable<string> globs;
        if (pid is int p)
        {
            globs = operands;
            ProcessImage image = ProcessImage.Load(p);
            files.AddRange(image.Modules.Select(m => (m.Path, m.Elf, (IReadOnlyList<PatchSite>)m.LinkSites.Sites, m.Bias)));
        }
        else
        {
            (string file, ElfFile elf) = LoadFile(operands, "--all ");
            globs = operands.Skip(1);
            files.Add((file, elf, SiteDiscovery.Scan(elf).Sites, 0));
        }

        var rows = new List<PatchSite>();
        var plans = new Dictionary<PatchSite, EntryPlan>(ReferenceEqualityComparer.Instance);
        foreach ((string path, ElfFile elf, IReadOnlyList<PatchSite> sites, ulong bias) in files)
        {
            FunctionCatalog catalog = FunctionCatalog.Of(elf, path);
            if (catalog.Functions.Count == 0)
            {
                if (pid is null)
                {
                    throw new HotwireException(
                        $"{path} has no symbol table, no debug file and no .eh_frame: Hotwire cannot find its functions; install its debug symbols (Debian: the -dbgsym package, or libc6-dbg for libc) or rebuild without stripping");
                }
                continue;
            }
            var siteStarts = new HashSet<ulong>();
            foreach (PatchSite site in sites)
            {
                siteStarts.Add(site.LinkAddress);
                if (site.AfterEndbr)
                {
                    siteStarts.Add(site.LinkAddress - 4);
                }
            }
            foreach ((FunctionEntry function, EntryPlan plan) in EntryClassifier.ClassifyAll(elf, catalog.Functions, siteStarts))
            {
                var row = new PatchSite(function.Name, function.Origin != FunctionOrigin.EhFrame, path, function.Address + bias, function.Address, SiteKind.Unknown, [], false);
                rows.Add(row);
                plans[row] = plan;
            }
        }
        if (rows.Count == 0)
        {
            throw new HotwireException($"pid {pid} has no module whose functions Hotwire can find");
        }

        List<PatchSite> selected = new FunctionFilter(globs).Select(rows);
        using (var output = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(encoderShouldEmitUTF8Identifier: false), 1 << 16))
        {
            foreach (PatchSite row in selected)
            {
                if (showAddresses)
                {
                    output.Write(row.Address.ToString("x16"));
                    output.Write(' ');
                }
                output.Write(row.Function);
                output.Write(" [");
                output.Write(row.ModuleName);
                output.Write("] ");
                output.Write(plans[row].Describe());
                output.Write('\n');
            }
        }

        int sited = 0, relocatable = 0, single = 0;
        var refused = new Dictionary<string, int>();
        foreach (PatchSite row in selected)
        {
            EntryPlan plan = plans[row];
            switch (plan.Kind)
            {
                case EntryKind.CompilerSite: sited++; break;
                case EntryKind.Relocatable:
                    relocatable++;
                    if (plan.Instructions == 1)
                    {
                        single++;
                    }
                    break;
                default:
                    refused[plan.Reason!] = refused.GetValueOrDefault(plan.Reason!) + 1;
                    break;
            }
        }
        int total = selected.Count;
        string reasons = string.Join("; ", refused.OrderByDescending(r => r.Value).Select(r => $"{r.Value} {r.Key}"));
        Console.Error.WriteLine(
            $"hotwire: {total} functions: {sited} with a compiler site, {relocatable} relocatable ({single} by one instruction), "
            + $"{refused.Values.Sum()} refused{(reasons.Length > 0 ? $" ({reasons})" : "")}; "
            + $"{100.0 * (sited + relocatable) / Math.Max(1, total):F1} % hookable. "
            + "Relocatable ones are traced with --relocate, and replaced by `hotwire patch` as they are");
        return ExitCode.Success;
    }

    /// <summary>The file the first operand names, loaded (a usage error without one; an object file is refused).</summary>
    private static (string File, ElfFile Elf) LoadFile(string[] operands, string option)
    {
        if (operands.Length == 0)
        {
            throw new UsageException($"give a program or shared library to list (hotwire ls {option}FILE), or a running process (hotwire ls {option}--pid N)");
        }
        string file = operands[0];
        ElfFile elf = ElfFile.Load(file);
        if (elf.Type == ElfType.Relocatable)
        {
            throw new HotwireException($"{file} is an object file; give the linked program or shared library");
        }
        return (file, elf);
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
