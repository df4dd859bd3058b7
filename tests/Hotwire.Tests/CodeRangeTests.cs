using Hotwire.Procfs;

namespace Hotwire.Tests;

/// <summary>
/// The pages a batch makes writable (PokeBatch.CodeRanges), without a process: as few mprotect runs
/// as can be, never one that spans two mappings, so each gets its own protection back.
/// </summary>
public class CodeRangeTests
{
    private static readonly MemoryMapping Text = new(0x401000, 0x409000, "r-xp", 0x1000, 1, "/bin/app");
    private static readonly MemoryMapping Next = new(0x409000, 0x40b000, "r-xp", 0x9000, 1, "/bin/app");   // same protection, another mapping
    private static readonly MemoryMapping Rwx = new(0x40b000, 0x40c000, "rwxp", 0xb000, 1, "/bin/app");

    private static List<PokeBatch.CodeRange> Ranges(params (ulong Address, int Length)[] sites)
        => PokeBatch.CodeRanges(sites, page => new[] { Text, Next, Rwx }.First(m => page >= m.Start && page < m.End));

    [Fact]
    public void Sites_on_one_page_or_on_adjacent_pages_of_a_mapping_make_one_run()
    {
        Assert.Equal([new PokeBatch.CodeRange(0x401000, 0x404000, 5)], Ranges((0x401010, 5), (0x401800, 5), (0x402000, 6), (0x403ff0, 5)));
    }

    [Fact]
    public void A_site_across_a_page_boundary_makes_both_pages_writable()
    {
        Assert.Equal([new PokeBatch.CodeRange(0x404000, 0x406000, 5)], Ranges((0x404ffd, 5)));
    }

    [Fact]
    public void Pages_apart_or_in_another_mapping_are_separate_runs_with_their_own_protection()
    {
        Assert.Equal(
            [
                new PokeBatch.CodeRange(0x401000, 0x402000, 5),
                new PokeBatch.CodeRange(0x403000, 0x404000, 5),
                new PokeBatch.CodeRange(0x408000, 0x409000, 5),
                new PokeBatch.CodeRange(0x409000, 0x40a000, 5),   // adjacent, but another mapping
                new PokeBatch.CodeRange(0x40b000, 0x40c000, 7),
            ],
            Ranges((0x401000, 5), (0x403000, 5), (0x408ff0, 5), (0x409000, 5), (0x40b100, 5)));
    }
}
