using Hotwire.Elf;
using Hotwire.Symbols;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Tests;

/// <summary>
/// Functions of unmodified binaries: found from .symtab, a debug file (build-id, .gnu_debuglink), or
/// .dynsym and .eh_frame (cold fragments left out), and each entry classified for relocation.
/// </summary>
public class FunctionDiscoveryTests
{
    private static readonly string[] OwnFunctions =
        ["add3", "bump", "helper", "twice_or_die", "checked", "die", "loop_into", "call_early", "sys_early", "rip_first", "call_last", "ret_early"];

    private static string Built(string name) => Path.Combine(Path.GetDirectoryName(TargetBuilder.Get(Flavour.Prologues))!, name);

    private static string Temp(string name) => Directory.CreateTempSubdirectory(name + "-").FullName;

    private static Dictionary<string, ElfSymbol> SymtabFunctions()
        => ElfFile.Load(Built("prog")).ReadSymbols(false).Where(s => s.Type == ElfFile.STT_FUNC && s.Size > 0)
            .GroupBy(s => s.Name).ToDictionary(g => g.Key, g => g.First());

    [Fact]
    public void The_symbol_table_lists_every_function_and_leaves_cold_fragments_out()
    {
        FunctionCatalog catalog = FunctionCatalog.Of(ElfFile.Load(Built("prog")), Built("prog"));
        Assert.Equal(".symtab", catalog.Source);
        Dictionary<string, ElfSymbol> symtab = SymtabFunctions();
        Assert.Contains("twice_or_die.cold", symtab.Keys); // the build does split it
        foreach (string name in OwnFunctions)
        {
            FunctionEntry f = Assert.Single(catalog.Functions, f => f.Name == name);
            Assert.Equal((symtab[name].Value, symtab[name].Size), (f.Address, f.Size));
        }
        Assert.DoesNotContain(catalog.Functions, f => f.Name.Contains(".cold", StringComparison.Ordinal) || f.Address == symtab["twice_or_die.cold"].Value);
    }

    [Fact]
    public void A_stripped_binary_lists_its_functions_from_eh_frame_under_stable_names_without_the_cold_fragment()
    {
        FunctionCatalog catalog = FunctionCatalog.Of(ElfFile.Load(Built("prog.stripped")), Built("prog.stripped"), debugRoot: Temp("no-debug"));
        Assert.Equal(".dynsym and .eh_frame", catalog.Source);
        Dictionary<string, ElfSymbol> symtab = SymtabFunctions();
        foreach (string name in OwnFunctions)
        {
            ElfSymbol s = symtab[name];
            FunctionEntry f = Assert.Single(catalog.Functions, f => f.Address == s.Value);
            Assert.Equal($"sub_{s.Value:x}", f.Name);
            Assert.Equal(FunctionOrigin.EhFrame, f.Origin);
            Assert.Equal(s.Size, f.Size);
        }
        // Its FDE starts as an entry would (the function it came from has no frame): the jump to it gives it away.
        ulong cold = symtab["twice_or_die.cold"].Value;
        Assert.Contains(EhFrame.Read(ElfFile.Load(Built("prog"))), fde => fde.Start == cold && fde.EntryLike);
        Assert.DoesNotContain(catalog.Functions, f => f.Address == cold);
        // The PLT has an FDE too, whose rules start inside a frame.
        Assert.DoesNotContain(catalog.Functions, f => f.Name == "sub_1020");
    }

    [Fact]
    public void A_debug_file_found_by_build_id_names_the_functions_of_a_stripped_binary()
    {
        ElfFile stripped = ElfFile.Load(Built("prog.stripped"));
        string hex = Convert.ToHexStringLower(FunctionCatalog.BuildId(stripped)!);
        string root = Temp("debug-root");
        Directory.CreateDirectory(Path.Combine(root, ".build-id", hex[..2]));
        File.Copy(Built("prog.debug"), Path.Combine(root, ".build-id", hex[..2], hex[2..] + ".debug"), overwrite: true);

        FunctionCatalog catalog = FunctionCatalog.Of(stripped, Built("prog.stripped"), debugRoot: root);
        Assert.StartsWith("debug file ", catalog.Source, StringComparison.Ordinal);
        Dictionary<string, ElfSymbol> symtab = SymtabFunctions();
        foreach (string name in OwnFunctions)
        {
            FunctionEntry f = Assert.Single(catalog.Functions, f => f.Name == name);
            Assert.Equal(FunctionOrigin.DebugFile, f.Origin);
            Assert.Equal(symtab[name].Value, f.Address);
        }
    }

    [Fact]
    public void A_debug_file_named_by_gnu_debuglink_beside_the_binary_is_used()
    {
        FunctionCatalog catalog = FunctionCatalog.Of(ElfFile.Load(Built("prog.linked")), Built("prog.linked"), debugRoot: Temp("no-debug"));
        Assert.Equal(Built("prog.debug"), catalog.DebugFile);
        Assert.Contains(catalog.Functions, f => f.Name == "checked");
    }

    [Fact]
    public void Ls_all_gives_each_function_its_kind_and_each_refusal_its_reason()
    {
        CliResult result = HotwireCli.Run("ls", "--all", Built("prog"));
        Assert.Equal(0, result.ExitCode);
        string Line(string name) => Assert.Single(result.Lines, l => l.StartsWith(name + " [prog] ", StringComparison.Ordinal));
        Assert.EndsWith("refused: " + EntryClassifier.JumpIn, Line("loop_into"), StringComparison.Ordinal);
        Assert.EndsWith("refused: " + EntryClassifier.EarlyCall, Line("call_early"), StringComparison.Ordinal);
        Assert.EndsWith("refused: " + EntryClassifier.SystemCall, Line("sys_early"), StringComparison.Ordinal);
        Assert.EndsWith("refused: " + EntryClassifier.EarlyBranch, Line("ret_early"), StringComparison.Ordinal);
        Assert.EndsWith("relocatable: 1 instruction, 7 bytes, rip-relative", Line("rip_first"), StringComparison.Ordinal);
        Assert.EndsWith("relocatable: 2 instructions, 6 bytes, ends in a branch", Line("call_last"), StringComparison.Ordinal);
        Assert.StartsWith("relocatable: ", Line("add3")[("add3 [prog] ".Length)..], StringComparison.Ordinal);
        Assert.DoesNotContain(result.Lines, l => l.Contains(".cold", StringComparison.Ordinal));
        Assert.Matches(@"^hotwire: \d+ functions: 0 with a compiler site, \d+ relocatable .* refused \(.*\); [\d.]+ % hookable", result.Stderr.Trim());
    }

    [Fact]
    public void Ls_all_of_a_program_with_sites_says_site_for_them()
    {
        string prog = TargetBuilder.Get(Flavour.PatchablePie);
        CliResult all = HotwireCli.Run("ls", "--all", prog);
        CliResult sites = HotwireCli.Run("ls", prog);
        Assert.Equal(0, all.ExitCode);
        // Every function ls lists (those with a site) is a "site" in --all, and nothing else is.
        Assert.Equal(
            sites.Lines.Order(StringComparer.Ordinal),
            all.Lines.Where(l => l.EndsWith(" site", StringComparison.Ordinal)).Select(l => l[..^" site".Length]).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Ls_all_of_a_binary_with_neither_symbols_nor_eh_frame_says_what_to_install()
    {
        CliResult result = HotwireCli.Run("ls", "--all", Built("prog.bare"));
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("no symbol table, no debug file and no .eh_frame", result.Stderr, StringComparison.Ordinal);
        Assert.Contains("-dbgsym", result.Stderr, StringComparison.Ordinal);
        Assert.Single(result.Stderr.Trim().Split('\n'));
    }

    // ---- the classifier alone, on bytes assembled by Iced ----

    private static byte[] Assemble(ulong at, Action<Assembler> body)
    {
        var a = new Assembler(64);
        body(a);
        using var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), at);
        return stream.ToArray();
    }

    [Fact]
    public void Endbr64_stays_and_the_relocated_instructions_start_after_it()
    {
        byte[] code = Assemble(0x1000, a => { a.endbr64(); a.push(rbp); a.mov(rbp, rsp); a.sub(rsp, 0x20); a.leave(); a.ret(); });
        EntryPlan plan = EntryClassifier.Classify(code, 0x1000, []);
        Assert.Equal(EntryKind.Relocatable, plan.Kind);
        Assert.Equal(0x1004UL, plan.Patch);
        Assert.Equal((3, 8), (plan.Instructions, plan.Length)); // push (1) + mov (3) + sub imm8 (4)
    }

    [Fact]
    public void A_branch_from_anywhere_in_the_module_into_the_first_five_bytes_refuses_but_one_to_the_entry_does_not()
    {
        byte[] code = Assemble(0x2000, a => { a.xor(eax, eax); a.add(eax, 1); a.add(eax, 2); a.ret(); });
        Assert.Equal(EntryKind.Relocatable, EntryClassifier.Classify(code, 0x2000, [0x2000, 0x9000]).Kind);
        EntryPlan plan = EntryClassifier.Classify(code, 0x2000, [0x1000, 0x2002, 0x9000]);
        Assert.Equal((EntryKind.Refused, EntryClassifier.JumpIn), (plan.Kind, plan.Reason));
    }

    [Fact]
    public void A_final_indirect_call_through_rsp_refuses_and_other_final_calls_do_not()
    {
        byte[] viaRsp = Assemble(0x3000, a => { a.push(rbx); a.call(__qword_ptr[rsp + 8]); a.ret(); });
        Assert.Equal(EntryClassifier.StackCall, EntryClassifier.Classify(viaRsp, 0x3000, []).Reason);
        byte[] viaRax = Assemble(0x3000, a => { a.push(rbx); a.push(rbp); a.push(r12); a.call(rax); a.ret(); });
        EntryPlan plan = EntryClassifier.Classify(viaRax, 0x3000, []);
        Assert.Equal((EntryKind.Relocatable, true), (plan.Kind, plan.EndsInBranch));
    }

    [Fact]
    public void A_function_shorter_than_a_jump_or_with_undecodable_bytes_is_refused()
    {
        Assert.Equal(EntryClassifier.TooShort, EntryClassifier.Classify(Assemble(0, a => { a.xor(eax, eax); a.ret(); }), 0, []).Reason);
        Assert.Equal(EntryClassifier.TooShort, EntryClassifier.Classify([0x31, 0xc0, 0x48, 0x89], 0, []).Reason); // ends inside an instruction
        Assert.Equal(EntryClassifier.Undecodable, EntryClassifier.Classify([0x06, 0x90, 0x90, 0x90, 0x90, 0x90, 0xc3], 0, []).Reason); // push es: invalid in 64-bit mode
        Assert.Equal(EntryClassifier.SystemCall, EntryClassifier.Classify(Assemble(0, a => { a.int3(); a.nop(); a.nop(); a.nop(); a.nop(); a.ret(); }), 0, []).Reason);
    }

    [Fact]
    public void Libc_is_at_least_95_percent_hookable_and_malloc_free_and_write_are_relocatable()
    {
        string libc = "/lib/x86_64-linux-gnu/libc.so.6";
        ElfFile elf = ElfFile.Load(libc);
        FunctionCatalog catalog = FunctionCatalog.Of(elf, libc);
        Assert.True(catalog.Functions.Count > 1000, $"{catalog.Functions.Count} functions from {catalog.Source}");
        var plans = EntryClassifier.ClassifyAll(elf, catalog.Functions, new HashSet<ulong>());
        double hookable = plans.Count(p => p.Plan.Kind != EntryKind.Refused) / (double)plans.Count;
        Assert.True(hookable >= 0.95, $"{hookable:P1} of {plans.Count} ({catalog.Source})");
        ulong Exported(string name) => elf.ReadSymbols(true).First(s => s.Name == name && s.Type == ElfFile.STT_FUNC).Value;
        foreach (string name in new[] { "malloc", "free", "write" })
        {
            Assert.Equal(EntryKind.Relocatable, plans.Single(p => p.Function.Address == Exported(name)).Plan.Kind);
        }
    }
}
