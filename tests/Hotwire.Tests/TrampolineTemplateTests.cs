using Iced.Intel;

namespace Hotwire.Tests;

/// <summary>
/// Trampolines without a process: golden bytes of the template for an ops set, annotated with their
/// disassembly and decoded back with Iced (as iced's own encoder tests do), and the fixups that give
/// each site's copy its own values.
/// </summary>
public class TrampolineTemplateTests
{
    private const ulong Sentinel = 0x5a17_c0de_0000_0000;

    [Fact]
    public void A_redirect_alone_drops_the_return_slot_and_jumps_through_a_literal()
    {
        var redirect = new RedirectOps("f", 0x7f00_1234_5678);
        TrampolineTemplate t = TrampolineTemplate.Build([redirect]);

        byte[] golden =
        [
            0x48, 0x8d, 0x64, 0x24, 0x08,               // lea rsp,[rsp+8]
            0xff, 0x25, 0x00, 0x00, 0x00, 0x00,         // jmp qword ptr [rip+0]
            0x00, 0x00, 0x00, 0x00, 0xde, 0xc0, 0x17, 0x5a, // dq sentinel → the redirect target
        ];
        Assert.Equal(golden, t.Code);
        Assert.Equal(["lea rsp,[rsp+8]", "jmp qword ptr [0Bh]"], Decoded(t.Code, 11));
        TrampolineTemplate.Fixup f = Assert.Single(t.Fixups);
        Assert.Equal(new TrampolineTemplate.Fixup(11, redirect, TrampolineTemplate.Fixup.RedirectTarget), f);
    }

    [Fact]
    public void A_counter_then_a_redirect_counts_with_r11_kept_then_redirects()
    {
        var counter = new CountingOps(["f"]);   // not prepared: the locked counter, one parameter
        var redirect = new RedirectOps("f", 0x7f00_1234_5678);
        TrampolineTemplate t = TrampolineTemplate.Build([counter, redirect]);

        byte[] golden =
        [
            0x41, 0x53,                                             // push r11
            0x49, 0xbb, 0x00, 0x00, 0x00, 0x00, 0xde, 0xc0, 0x17, 0x5a, // mov r11,sentinel → the site's counter
            0xf0, 0x49, 0xff, 0x03,                                 // lock inc qword ptr [r11]
            0x41, 0x5b,                                             // pop r11
            0x48, 0x8d, 0x64, 0x24, 0x08,                           // lea rsp,[rsp+8]
            0xff, 0x25, 0x00, 0x00, 0x00, 0x00,                     // jmp qword ptr [rip+0]
            0x01, 0x00, 0x00, 0x00, 0xde, 0xc0, 0x17, 0x5a,         // dq sentinel + 1 → the redirect target
        ];
        Assert.Equal(golden, t.Code);
        Assert.Equal(["push r11", $"mov r11,{Sentinel:X16}h", "lock inc qword ptr [r11]", "pop r11", "lea rsp,[rsp+8]", "jmp qword ptr [1Dh]"],
            Decoded(t.Code, 29));
        Assert.Equal([new TrampolineTemplate.Fixup(4, counter, 0), new TrampolineTemplate.Fixup(29, redirect, TrampolineTemplate.Fixup.RedirectTarget)], t.Fixups);
    }

    [Fact]
    public void Without_a_redirect_the_trampoline_returns_to_the_function()
    {
        TrampolineTemplate t = TrampolineTemplate.Build([new CountingOps(["f"])]);
        Assert.Equal(0xc3, t.Code[^1]);   // ret
        Assert.Equal("ret", Decoded(t.Code, t.Code.Length)[^1]);
    }

    // The instructions in code[..length], in Iced's formatting (addresses from 0).
    private static List<string> Decoded(byte[] code, int length)
    {
        var decoder = Decoder.Create(64, code.AsMemory(0, length).ToArray(), 0);
        var formatter = new IntelFormatter();
        var list = new List<string>();
        while (decoder.IP < (ulong)length)
        {
            var output = new StringOutput();
            formatter.Format(decoder.Decode(), output);
            list.Add(output.ToStringAndReset());
        }
        return list;
    }
}
