namespace Hotwire.Patching;

/// <summary>
/// A site's bytes: up to <see cref="MaxLength"/>, little-endian in two words, zero past the site's
/// length (AgentLayout's site, batch and base entries hold them so). x86 instructions are at most 15
/// bytes; a replaced prologue is 5 to 15.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct SiteBytes(ulong Lo, ulong Hi)
{
    public const int MaxLength = 16;

    /// <summary>The first 8 bytes only (a 5- or 6-byte site's bytes all fit in them).</summary>
    public static SiteBytes Of(ulong lo) => new(lo, 0);

    public static SiteBytes From(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > MaxLength)
        {
            throw new ArgumentException($"a site holds at most {MaxLength} bytes", nameof(bytes));
        }
        Span<byte> b = stackalloc byte[MaxLength];
        b.Clear();
        bytes.CopyTo(b);
        return new SiteBytes(BitConverter.ToUInt64(b), BitConverter.ToUInt64(b[8..]));
    }

    public byte[] ToArray(int length)
    {
        Span<byte> b = stackalloc byte[MaxLength];
        BitConverter.TryWriteBytes(b, Lo);
        BitConverter.TryWriteBytes(b[8..], Hi);
        return b[..length].ToArray();
    }

    /// <summary>Reads the 16 bytes at <paramref name="offset"/> of the shared region (a table entry's field).</summary>
    public static SiteBytes Read(SharedRegion shared, ulong offset) => new(shared.ReadU64(offset), shared.ReadU64(offset + 8));

    /// <summary>Writes them at <paramref name="offset"/>, the high word first: a reader that sees the new low word sees the new high word.</summary>
    public void Write(SharedRegion shared, ulong offset)
    {
        shared.WriteU64(offset + 8, Hi);
        shared.WriteU64(offset, Lo);
    }

    public override string ToString() => $"{Hi:x16}{Lo:x16}";
}
