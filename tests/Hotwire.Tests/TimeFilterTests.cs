using Hotwire.Tracing;

namespace Hotwire.Tests;

/// <summary>The time filter (record --time-filter, uftrace's -t) over synthetic events: no process.</summary>
public class TimeFilterTests
{
    private static RawEvent Entry(ulong tsc, int site, int depth, ulong lost = 0) => new(tsc, 0, site, [], (ulong)RawEvent.Entry | (ulong)depth << 2 | lost << 32);

    private static RawEvent Exit(ulong tsc, int site, int depth) => new(tsc, 0, site, [], (ulong)RawEvent.Exit | (ulong)depth << 2);

    private static List<string> Shown(IEnumerable<RawEvent> events) => events.Select(e => $"{(e.IsExit ? "exit" : "entry")} {e.Site}@{e.Tsc}").ToList();

    [Fact]
    public void A_call_shorter_than_the_threshold_is_left_out_and_a_longer_one_kept()
    {
        var filter = new TimeFilter(100);
        List<RawEvent> kept = filter.Filter(1, [Entry(0, 1, 0), Exit(50, 1, 0), Entry(60, 2, 0), Exit(200, 2, 0)]);
        Assert.Equal(["entry 2@60", "exit 2@200"], Shown(kept));
    }

    [Fact]
    public void A_long_callee_brings_its_callers_entries_first_in_order_even_from_an_earlier_pass()
    {
        var filter = new TimeFilter(100);
        Assert.Empty(filter.Filter(1, [Entry(0, 1, 0), Entry(10, 2, 1), Entry(20, 3, 2)]));   // held back

        List<RawEvent> kept = filter.Filter(1, [Exit(500, 3, 2), Exit(510, 2, 1), Exit(520, 1, 0)]);

        Assert.Equal(["entry 1@0", "entry 2@10", "entry 3@20", "exit 3@500", "exit 2@510", "exit 1@520"], Shown(kept));
    }

    [Fact]
    public void Threads_are_filtered_apart()
    {
        var filter = new TimeFilter(100);
        Assert.Empty(filter.Filter(1, [Entry(0, 1, 0)]));
        Assert.Equal(["exit 1@300"], Shown(filter.Filter(2, [Exit(300, 1, 0)])));   // thread 2 never saw the entry
        Assert.Equal(["entry 1@0", "exit 1@300"], Shown(filter.Filter(1, [Exit(300, 1, 0)])));
    }

    [Fact]
    public void A_loss_drops_the_entries_held_before_it_and_marks_the_first_event_kept_after_it()
    {
        var filter = new TimeFilter(100);
        List<RawEvent> kept = filter.Filter(1, [Entry(0, 1, 0), Entry(10, 2, 1), Entry(20, 3, 0, lost: 7), Exit(400, 3, 0), Exit(410, 1, 0)]);

        Assert.Equal(["entry 3@20", "exit 3@400", "exit 1@410"], Shown(kept));
        Assert.Equal(7u, kept[0].LostBefore);
    }

    [Fact]
    public void A_loss_with_nothing_kept_after_it_is_carried_to_the_next_pass()
    {
        var filter = new TimeFilter(100);
        Assert.Empty(filter.Filter(1, [Entry(0, 1, 0, lost: 5), Exit(10, 1, 0)]));

        List<RawEvent> kept = filter.Filter(1, [Entry(20, 2, 0), Exit(300, 2, 0)]);

        Assert.Equal(5u, kept[0].LostBefore);
        Assert.Equal(0u, kept[1].LostBefore);
    }
}
