using Iced.Intel;

namespace Hotwire.Tests;

/// <summary>The site decision, without a process (SitePlanner): shapes, and the bytes decoded back with Iced.</summary>
public class SitePlannerTests
{
    private const ulong Site = 0x55_5555_1000;
    private const ulong Near = Site + 0x10_0000;            // within a rel32 of the site
    private const ulong Far = Site + 0x1_0000_0000;         // 4 GiB away: beyond it

    private static SiteDecision Decide(params Ops[] ops) => SitePlanner.Decide(Site, ops, o => ((RedirectOps)o).Target);

    [Fact]
    public void No_ops_is_the_nop_of_the_sites_length()
    {
        SiteDecision d = Decide();
        Assert.Equal(SiteShape.Nop, d.Shape);
        Assert.Equal(["nop [rax+rax]"], Decoded(SitePlanner.Bytes(d, Site, 5), 5));
        Assert.Equal(["nop [rax+rax]", "nop"], Decoded(SitePlanner.Bytes(d, Site, 6), 6));
    }

    [Fact]
    public void A_tracer_calls_its_trampoline()
    {
        SiteDecision d = Decide(new CountingOps());
        Assert.Equal(new SiteDecision(SiteShape.CallTrampoline, 0, null), d);
        Assert.Equal([$"call {Near:X16}h"], Decoded(SitePlanner.Bytes(d, Site, 5, trampoline: Near), 5));
    }

    [Fact]
    public void A_redirect_alone_in_reach_is_a_jmp_with_no_trampoline()
    {
        var redirect = new RedirectOps("f", Near);
        SiteDecision d = Decide(redirect);
        Assert.Equal(new SiteDecision(SiteShape.Jump, Near, redirect), d);
        Assert.Equal([$"jmp {Near:X16}h", "nop"], Decoded(SitePlanner.Bytes(d, Site, 6), 6));
    }

    [Fact]
    public void A_redirect_out_of_reach_goes_through_a_trampoline()
    {
        var redirect = new RedirectOps("f", Far);
        Assert.Equal(new SiteDecision(SiteShape.CallTrampoline, 0, redirect), Decide(redirect));
        Assert.False(SitePlanner.InReach(Site, Far));
        Assert.True(SitePlanner.InReach(Site, Site + 5 - 0x8000_0000));   // the farthest back a rel32 goes
        Assert.False(SitePlanner.InReach(Site, Site + 5 - 0x8000_0001));
    }

    [Fact]
    public void A_tracer_with_a_redirect_calls_the_trampoline_which_then_redirects()
    {
        var redirect = new RedirectOps("f", Near);
        var tracer = new CountingOps();
        Assert.Equal(new SiteDecision(SiteShape.CallTrampoline, 0, redirect), Decide(tracer, redirect));
        Assert.Equal(new SiteDecision(SiteShape.CallTrampoline, 0, redirect), Decide(redirect, tracer));   // stacking order does not matter
    }

    [Fact]
    public void Site_bytes_hold_up_to_16_bytes_and_give_them_back()
    {
        byte[] prologue = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x53, 0x48, 0x83, 0xec];   // endbr64; push rbp; mov rbp,rsp; push r15; push r14; push rbx; sub rsp,...
        SiteBytes b = SiteBytes.From(prologue);
        Assert.Equal(prologue, b.ToArray(16));
        Assert.Equal(prologue[..11], SiteBytes.From(prologue[..11]).ToArray(11));
        Assert.Equal(0UL, SiteBytes.From(prologue[..8]).Hi);                                 // zero past the length
        Assert.NotEqual(SiteBytes.From(prologue[..9]), SiteBytes.From(prologue[..8]));       // a byte past 8 counts
        Assert.Throws<ArgumentException>(() => SiteBytes.From(new byte[17]));
    }

    // The instructions the bytes hold, in Iced's formatting.
    private static List<string> Decoded(SiteBytes bytes, int length)
    {
        byte[] code = bytes.ToArray(length);
        var decoder = Decoder.Create(64, code, Site);
        var formatter = new IntelFormatter();
        var list = new List<string>();
        while (decoder.IP < Site + (ulong)length)
        {
            var output = new StringOutput();
            formatter.Format(decoder.Decode(), output);
            list.Add(output.ToStringAndReset());
        }
        return list;
    }
}
