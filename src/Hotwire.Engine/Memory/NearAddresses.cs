namespace Hotwire.Memory;

/// <summary>
/// Where Hotwire maps code that the target's code reaches with a rel32 jmp or call (±2 GiB): a
/// module's trampoline regions, a live patch's code. One rule for all of them: within reach of every
/// byte of the code that jumps there, in a gap of the address space, nearest first, below it when
/// possible (above a program there is its brk heap, which grows up).
/// </summary>
public static class NearAddresses
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
}
