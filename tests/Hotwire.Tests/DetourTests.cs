using System.Globalization;
using Hotwire.Elf;

namespace Hotwire.Tests;

/// <summary>
/// Each relocation rule checked by differential execution: the original function and its detour
/// (placed in a region of a gcc-built target and called as the function) give the same results, leave
/// the same memory, and a callee sees the same return address.
/// </summary>
public class DetourTests
{
    public static TheoryData<string> Rules => new()
    {
        "rip_load", "rip_store", "rip_lea", "rip_cmp", "jcc_short", "jcc_near", "jmp_last", "call_last", "icall_last", "endbr_frame",
    };

    [Theory]
    [MemberData(nameof(Rules))]
    public void The_detour_computes_what_the_original_entry_computes(string function)
    {
        string prog = TargetBuilder.Get(Flavour.DetourRun);
        ElfFile elf = ElfFile.Load(prog);
        ElfSymbol symbol = elf.ReadSymbols(false).Single(s => s.Name == function);
        ulong note = elf.ReadSymbols(false).Single(s => s.Name == "note").Value;
        byte[] body = new byte[symbol.Size];
        Assert.True(elf.TryReadVirtual(symbol.Value, body));
        ulong[] targets = EntryClassifier.BranchTargets(elf, [new Hotwire.Symbols.FunctionEntry(function, symbol.Value, symbol.Size, Hotwire.Symbols.FunctionOrigin.Symtab)]);
        EntryPlan plan = EntryClassifier.Classify(body, symbol.Value, targets);
        Assert.Equal(EntryKind.Relocatable, plan.Kind);

        using TargetProcess target = TargetProcess.Start(prog);
        ulong region = ulong.Parse(target.ReadyWords[2], NumberStyles.HexNumber);
        Detour detour = DetourBuilder.Build(body.AsSpan((int)(plan.Patch - symbol.Value)), plan, region);
        target.WriteLine("load " + Convert.ToHexString(detour.Code));
        Assert.Equal($"loaded {detour.Code.Length}", target.ReadLine(TimeSpan.FromSeconds(10)));

        // The detour's entry is its own NOP5 site; execution then runs the relocated instructions and
        // jumps back into the function (for endbr_frame, past its endbr64).
        foreach ((long a, long b) in new (long, long)[] { (0, 0), (1, 2), (-5, 3), (7, -7), (200, 100), (3, (long)note) })
        {
            long second = function == "icall_last" ? (long)note : b;
            target.WriteLine($"run {function} {detour.Entry} {a} {second}");
            string[] r = target.ReadLine(TimeSpan.FromSeconds(10))!.Split(' ');
            Assert.True(r.Length == 6, string.Join(' ', r));
            Assert.Equal((r[0], r[2], r[4]), (r[1], r[3], r[5])); // result, return address seen by note(), counter
        }
    }

    [Fact]
    public void A_final_call_returns_straight_into_the_function_as_the_original_call_did()
        => Assert.Equal("same", ReturnAddressSeenThroughTheDetour());

    /// <summary>Teeth: relocated as a plain call, the callee returns into the detour (a frame no unwinder knows).</summary>
    [Fact]
    public void With_a_plain_relocated_call_the_callee_sees_the_detour_as_its_caller()
    {
        TestSwitches.PlainDetourCall = true;
        try
        {
            Assert.Equal("detour", ReturnAddressSeenThroughTheDetour());
        }
        finally
        {
            TestSwitches.PlainDetourCall = false;
        }
    }

    /// <summary>call_last through its detour: "same" when note() sees the original return address (call_last + 6), "detour" when one in the detour's region.</summary>
    private static string ReturnAddressSeenThroughTheDetour()
    {
        string prog = TargetBuilder.Get(Flavour.DetourRun);
        ElfFile elf = ElfFile.Load(prog);
        ElfSymbol symbol = elf.ReadSymbols(false).Single(s => s.Name == "call_last");
        byte[] body = new byte[symbol.Size];
        Assert.True(elf.TryReadVirtual(symbol.Value, body));
        EntryPlan plan = EntryClassifier.Classify(body, symbol.Value, []);
        using TargetProcess target = TargetProcess.Start(prog);
        ulong region = ulong.Parse(target.ReadyWords[2], NumberStyles.HexNumber);
        Detour detour = DetourBuilder.Build(body, plan, region);
        target.WriteLine("load " + Convert.ToHexString(detour.Code));
        target.ReadLine(TimeSpan.FromSeconds(10));
        target.WriteLine($"run call_last {detour.Entry} 4 0");
        string[] r = target.ReadLine(TimeSpan.FromSeconds(10))!.Split(' ');
        ulong seen = Convert.ToUInt64(r[3], 16);
        Assert.Equal(r[0], r[1]); // the result is right either way
        // push (1) + call (5): the original return address is call_last + 6.
        return seen == symbol.Value + 6 ? "same" : seen >= region && seen < region + (ulong)detour.Code.Length ? "detour" : $"0x{seen:x}";
    }

    /// <summary>
    /// The same compare as if in a PIE library at 0x5555_5555_0000 and the detour 40 TiB away: the
    /// operand's target fits neither a rel32 from the detour nor an absolute disp32. (Iced reaches
    /// what it can: a far jmp back becomes an indirect jmp, a target below 2 GiB an absolute address.)
    /// </summary>
    [Fact]
    public void A_detour_out_of_reach_of_a_rip_relative_operand_is_refused_in_one_line()
    {
        string prog = TargetBuilder.Get(Flavour.DetourRun);
        ElfFile elf = ElfFile.Load(prog);
        ElfSymbol symbol = elf.ReadSymbols(false).Single(s => s.Name == "rip_cmp");
        byte[] body = new byte[symbol.Size];
        Assert.True(elf.TryReadVirtual(symbol.Value, body));
        EntryPlan plan = EntryClassifier.Classify(body, 0x5555_5555_0000, []);
        Assert.Equal(EntryKind.Relocatable, plan.Kind);
        var e = Assert.Throws<HotwireException>(() => DetourBuilder.Build(body, plan, 0x7f00_0000_0000));
        Assert.StartsWith("cannot relocate the entry at 0x555555550000 to 0x7f000000000d: ", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }
}
