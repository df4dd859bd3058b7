namespace Hotwire.Patching;

/// <summary>
/// Code space in the block's memfd, mapped executable in the target within ±2 GiB of one module,
/// so that a site's 5-byte call or jmp reaches it: its trampolines, detours, thunks and stubs.
/// Space is only ever added to (<see cref="Reserve"/>): a thread may run old code after Hotwire is
/// gone, so nothing placed here is reused while the block lives.
/// </summary>
internal sealed class CodeRegion(ulong moduleStart, ulong targetAddress, ulong memfdOffset, ulong size)
{
    /// <summary>Start of the module whose sites jump here.</summary>
    public ulong ModuleStart { get; } = moduleStart;

    /// <summary>Offset of this region's entry in the header's region table (0: none).</summary>
    public ulong TableEntry { get; set; }

    public ulong TargetAddress { get; set; } = targetAddress;

    public ulong MemfdOffset { get; } = memfdOffset;

    public ulong Size { get; } = size;

    public ulong Used { get; set; }

    /// <summary>Writes its entry <paramref name="index"/> of the header's region table, for a later Hotwire that takes the block over.</summary>
    public void Describe(SharedRegion header, int index)
    {
        TableEntry = (ulong)(AgentLayout.RegionTable + index * AgentLayout.RegionEntrySize);
        header.WriteU64(TableEntry + AgentLayout.RegionModuleStart, ModuleStart);
        header.WriteU64(TableEntry + AgentLayout.RegionAddress, TargetAddress);
        header.WriteU64(TableEntry + AgentLayout.RegionSize, Size);
        header.WriteU64(TableEntry + AgentLayout.RegionMemfdOffset, MemfdOffset);
        header.WriteU64(TableEntry + AgentLayout.RegionUsed, Used);
    }

    /// <summary>True when <paramref name="bytes"/> more fit.</summary>
    public bool Fits(ulong bytes) => Used + bytes <= Size;

    /// <summary>
    /// Takes the next <paramref name="bytes"/> (rounded up to <paramref name="align"/>) and returns
    /// their address in the target, and in <paramref name="space"/> the same bytes in Hotwire's
    /// mapping, for the caller to fill. The high-water mark in the header moves first: a later
    /// Hotwire that takes the block over poisons everything below it.
    /// </summary>
    public ulong Reserve(SharedRegion shared, ulong bytes, ulong align, string whenFull, out Span<byte> space)
    {
        ulong size = (bytes + align - 1) & ~(align - 1);
        if (!Fits(size))
        {
            throw new HotwireException(whenFull);
        }
        if (TableEntry != 0)
        {
            shared.WriteU64(TableEntry + AgentLayout.RegionUsed, Math.Max(Used + size, shared.ReadU64(TableEntry + AgentLayout.RegionUsed)));
        }
        ulong at = TargetAddress + Used;
        space = shared.Bytes(MemfdOffset + Used, (int)bytes);
        Used += size;
        return at;
    }

    /// <summary><see cref="Reserve"/> for finished code: copies it in and returns its address.</summary>
    public ulong Place(SharedRegion shared, ReadOnlySpan<byte> code, ulong align, string whenFull)
    {
        ulong at = Reserve(shared, (ulong)code.Length, align, whenFull, out Span<byte> space);
        code.CopyTo(space);
        return at;
    }
}
