namespace Hotwire.Memory;

/// <summary>
/// Where Hotwire maps its memory in the target. The block goes just below the mmap area's lowest
/// mapping (<see cref="FreeRange"/>). Code the target reaches with a rel32 jmp or call (a module's
/// trampoline regions, a live patch's code) goes within ±2 GiB of every byte of the code that jumps
/// there, in a gap of the address space, nearest first, below it when possible (above a program is
/// its brk heap, which grows up): one rule for all of them (<see cref="Candidates"/>).
/// </summary>
public static class TargetAddresses
{
    /// <summary>What a rel32 reaches, less 1 MiB of margin.</summary>
    public const ulong Reach = (1UL << 31) - (1UL << 20);

    /// <summary>Room left above a range before a candidate, when the gap starts right at its end (a program's brk heap).</summary>
    private const ulong AboveRoom = 256UL << 20;

    /// <summary>
    /// Up to <paramref name="max"/> page-aligned addresses for <paramref name="size"/> bytes, each in a
    /// gap between <paramref name="occupied"/> ranges and within <see cref="Reach"/> of all of
    /// [<paramref name="start"/>, <paramref name="end"/>): the gaps below first, nearest first, then above.
    /// </summary>
    public static List<ulong> Candidates(ulong start, ulong end, ulong size, IEnumerable<(ulong Start, ulong End)> occupied, int max = 16)
    {
        ulong lo = end > Reach ? end - Reach : 0x100000;
        ulong hi = start + Reach;
        var gaps = new List<(ulong Start, ulong End)>();
        ulong prevEnd = 0x100000;
        foreach ((ulong s, ulong e) in occupied.OrderBy(o => o.Start))
        {
            if (s > prevEnd)
            {
                gaps.Add((prevEnd, s));
            }
            prevEnd = Math.Max(prevEnd, e);
        }
        gaps.Add((prevEnd, 0x7fff_0000_0000));
        var candidates = new List<ulong>();
        foreach ((ulong gs, ulong ge) in gaps.Where(g => g.End <= start).OrderByDescending(g => g.End))
        {
            ulong at = (ge - size) & ~0xfffUL;
            if (ge >= size && at >= gs && at >= lo)
            {
                candidates.Add(at);
            }
        }
        foreach ((ulong gs, ulong ge) in gaps.Where(g => g.Start >= end).OrderBy(g => g.Start))
        {
            ulong at = (gs + (gs == end ? AboveRoom : 0) + 0xfff) & ~0xfffUL;
            if (at + size <= ge && at + size <= hi)
            {
                candidates.Add(at);
            }
        }
        return candidates.Take(max).ToList();
    }

    /// <summary>
    /// Where to put <paramref name="size"/> bytes: just below the lowest mapping of the mmap area
    /// (where the kernel's top-down allocator would put them), else the largest gap.
    /// </summary>
    public static ulong FreeRange(List<(ulong Start, ulong End)> occupied, IEnumerable<ulong> anchors, ulong size)
    {
        const ulong MmapArea = 0x7000_0000_0000, Slack = 1UL << 30, Huge = 2UL << 20; // 1 GiB clear of where the kernel puts the target's own next mmaps
        var sorted = occupied.OrderBy(o => o.Start).ToList();
        bool Free(ulong start, ulong end) => start >= 0x10000 && !sorted.Any(o => o.Start < end && start < o.End);
        foreach (ulong s in anchors.Where(a => a >= MmapArea).Order())
        {
            if (s > size + Slack)
            {
                ulong at = (s - size - Slack) & ~(Huge - 1);
                if (Free(at, at + size))
                {
                    return at;
                }
            }
        }
        ulong prevEnd = 0x100000;
        (ulong Start, ulong End) best = default;
        foreach ((ulong s, ulong e) in sorted)
        {
            if (s > prevEnd && s - prevEnd > best.End - best.Start)
            {
                best = (prevEnd, s);
            }
            prevEnd = Math.Max(prevEnd, e);
        }
        if (best.End - best.Start >= size + 2 * Huge)
        {
            return (best.Start + Huge + Huge - 1) & ~(Huge - 1);
        }
        throw new HotwireException($"no free address space for Hotwire's {size >> 20} MiB in the target");
    }
}
