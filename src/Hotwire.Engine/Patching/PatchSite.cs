namespace Hotwire.Patching;

/// <summary>What the compiler put at a function's entry for Hotwire to rewrite.</summary>
public enum SiteKind
{
    /// <summary><c>0f 1f 44 00 00</c> from <c>-pg -mfentry -mnop-mcount -mrecord-mcount</c>.</summary>
    Nop5,

    /// <summary>Five one-byte NOPs from <c>-fpatchable-function-entry=5</c>; made one NOP5 before first use.</summary>
    NopSled,

    /// <summary><c>ff 15 rel32</c>: <c>call *__fentry__@GOTPCREL(%rip)</c> from <c>-pg -mfentry</c> in PIE (6 bytes).</summary>
    FentryCallIndirect,

    /// <summary><c>e8 rel32</c>: <c>call __fentry__</c> from <c>-pg -mfentry</c> without <c>-mnop-mcount</c>.</summary>
    FentryCall,

    /// <summary>The recorded address holds none of the above (damaged, or not an entry site).</summary>
    Unknown,

    /// <summary>
    /// No compiler site: the entry's first instructions (5 or more bytes, past <c>endbr64</c>) are
    /// relocated into a detour, and the site's bytes are its first 5 (<see cref="EntryClassifier"/>).
    /// </summary>
    Relocated,
}

public static class SiteKinds
{
    public static int Length(this SiteKind kind) => kind switch
    {
        SiteKind.FentryCallIndirect => 6,
        SiteKind.Unknown => 0,
        _ => 5,
    };

    public static string Label(this SiteKind kind) => kind switch
    {
        SiteKind.Nop5 => "nop5",
        SiteKind.NopSled => "nop1x5",
        SiteKind.FentryCallIndirect => "fentry*",
        SiteKind.FentryCall => "fentry",
        SiteKind.Relocated => "reloc",
        _ => "unknown",
    };

    /// <summary>Classifies the bytes the compiler left at a recorded site.</summary>
    public static SiteKind Classify(ReadOnlySpan<byte> b)
    {
        if (b.Length >= 5 && b[0] == 0x0f && b[1] == 0x1f && b[2] == 0x44 && b[3] == 0x00 && b[4] == 0x00)
        {
            return SiteKind.Nop5;
        }
        if (b.Length >= 5 && b[0] == 0x90 && b[1] == 0x90 && b[2] == 0x90 && b[3] == 0x90 && b[4] == 0x90)
        {
            return SiteKind.NopSled;
        }
        if (b.Length >= 6 && b[0] == 0xff && b[1] == 0x15)
        {
            return SiteKind.FentryCallIndirect;
        }
        if (b.Length >= 5 && b[0] == 0xe8)
        {
            return SiteKind.FentryCall;
        }
        return SiteKind.Unknown;
    }
}

/// <summary>
/// One patch site: the instruction at a function's entry (after an <c>endbr64</c>, if any).
/// <see cref="Address"/> is where it is now (runtime address in a process; link-time address in a file).
/// </summary>
public sealed record PatchSite(
    string Function,
    bool HasSymbol,
    string Module,
    ulong Address,
    ulong LinkAddress,
    SiteKind Kind,
    byte[] OriginalBytes,
    bool AfterEndbr)
{
    public string ModuleName => System.IO.Path.GetFileName(Module);
}
