using Hotwire.Tracing;

namespace Hotwire.Tests;

public class EventPackingTests
{
    [Fact]
    public void Packed_events_unpack_to_the_same_values_including_backward_steps_and_extremes()
    {
        const int Args = 2, Size = 24 + 8 * Args, Count = 1000;
        var raw = new byte[Count * Size];
        var rng = new Random(7);
        var expected = new List<ulong[]>();
        for (int i = 0; i < Count; i++)
        {
            ulong[] fields =
            [
                1_000_000UL + (ulong)i * 37 - (i % 10 == 0 ? 500UL : 0), // timestamps, sometimes stepping back
                i % 3 == 0 ? ulong.MaxValue - (ulong)i : 0x7f00_0000_1000UL + (ulong)rng.Next(4096),
                (ulong)rng.Next(50_000),
                (ulong)(long)-i,
                i % 7 == 0 ? 0UL : (ulong)rng.NextInt64(),
            ];
            expected.Add(fields);
            for (int f = 0; f < fields.Length; f++)
            {
                BitConverter.TryWriteBytes(raw.AsSpan(i * Size + 8 * f), fields[f]);
            }
        }
        var packed = new byte[EventPacking.MaxPackedBytes(Count, Args)];
        int length = EventPacking.Pack(raw, Count, Size, Args, new ulong[16], packed);
        Assert.True(length < raw.Length, "packing did not make the events smaller");
        var events = new List<RawEvent>();
        Assert.Equal(length, EventPacking.Unpack(packed.AsSpan(0, length), Count, Args, events));
        Assert.Equal(Count, events.Count);
        for (int i = 0; i < Count; i++)
        {
            Assert.Equal(expected[i][0], events[i].Tsc);
            Assert.Equal(expected[i][1], events[i].Caller);
            Assert.Equal((int)expected[i][2], events[i].Site);
            Assert.Equal(expected[i][3..], events[i].Args);
        }
        // A chunk cut short keeps exactly its complete events.
        var partial = new List<RawEvent>();
        EventPacking.Unpack(packed.AsSpan(0, length / 2), Count, Args, partial);
        Assert.InRange(partial.Count, 1, Count - 1);
        Assert.Equal(events.Take(partial.Count).Select(e => e.Tsc), partial.Select(e => e.Tsc));
    }
}
