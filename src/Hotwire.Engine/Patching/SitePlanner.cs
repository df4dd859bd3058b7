namespace Hotwire.Patching;

/// <summary>What a site holds for its ops: nothing (the NOP), a jmp, or a call to a trampoline.</summary>
public enum SiteShape
{
    Nop,
    Jump,
    CallTrampoline,
}

/// <summary>
/// The decision for one site (the kernel's ftrace_check_record / ftrace_get_addr_new): which shape
/// it takes for its set of ops, and for a redirect where calls go. No ops: the NOP. Only a redirect,
/// in reach of a rel32 jmp: the jmp itself, no trampoline. Anything else: a call to the site's
/// trampoline, which runs the other ops' code in order and then returns, or goes to the redirect.
/// </summary>
public readonly record struct SiteDecision(SiteShape Shape, ulong JumpTarget, Ops? Redirect);

/// <summary>
/// The pure part of the engine's per-site work: decisions and the bytes that carry them out, with no
/// process, no memory and no trampoline placed (the executor, <see cref="Session"/>, does that).
/// At most one redirecting ops per site is the registry's rule (Session.Change), checked before.
/// </summary>
public static class SitePlanner
{
    /// <summary>0f 1f 44 00 00: the 5-byte NOP every site rests at.</summary>
    public const ulong Nop5 = 0x00_0000_441f0f;

    /// <summary>byte 5 of a 6-byte site (a PIE's <c>call *__fentry__@GOTPCREL</c>): a 1-byte NOP.</summary>
    public const ulong TrailingNop = 0x90UL << 40;

    /// <param name="redirectTarget">where the redirecting ops sends the site's calls</param>
    public static SiteDecision Decide(ulong siteAddress, IReadOnlyList<Ops> ops, Func<Ops, ulong> redirectTarget)
        => Decide(siteAddress, ops, redirectTarget, static (o, f) => f(o));

    /// <summary><see cref="Decide(ulong, IReadOnlyList{Ops}, Func{Ops, ulong})"/> with a state for a static lambda: no allocation per site.</summary>
    public static SiteDecision Decide<T>(ulong siteAddress, IReadOnlyList<Ops> ops, T state, Func<Ops, T, ulong> redirectTarget)
    {
        if (ops.Count == 0)
        {
            return new SiteDecision(SiteShape.Nop, 0, null);
        }
        Ops? redirect = null;
        bool onlyRedirect = true;
        for (int i = 0; i < ops.Count; i++)
        {
            Ops o = ops[i];
            if (o.Redirects)
            {
                redirect = o;
            }
            else
            {
                onlyRedirect = false;
            }
        }
        if (onlyRedirect && redirect is not null)
        {
            ulong target = redirectTarget(redirect, state);
            if (InReach(siteAddress, target))
            {
                return new SiteDecision(SiteShape.Jump, target, redirect);
            }
        }
        return new SiteDecision(SiteShape.CallTrampoline, 0, redirect);
    }

    /// <summary>True when a rel32 jmp or call at <paramref name="siteAddress"/> reaches <paramref name="target"/>.</summary>
    public static bool InReach(ulong siteAddress, ulong target)
        => (long)target - (long)(siteAddress + 5) is >= int.MinValue and <= int.MaxValue;

    /// <summary>
    /// The site's bytes (<paramref name="length"/> of them: 5, or 6 with a trailing NOP) for a decision;
    /// <paramref name="trampoline"/> is where a call goes (unused otherwise).
    /// </summary>
    public static SiteBytes Bytes(SiteDecision decision, ulong siteAddress, int length, ulong trampoline = 0)
    {
        ulong tail = length == 6 ? TrailingNop : 0;
        return SiteBytes.Of(decision.Shape switch
        {
            SiteShape.Nop => Nop5 | tail,
            SiteShape.Jump => 0xe9UL | (ulong)(uint)Rel32(siteAddress, decision.JumpTarget) << 8 | tail,
            _ => 0xe8UL | (ulong)(uint)Rel32(siteAddress, trampoline) << 8 | tail,
        });
    }

    private static int Rel32(ulong siteAddress, ulong target) => checked((int)((long)target - (long)(siteAddress + 5)));
}
