namespace Hotwire.Tracing;

/// <summary>
/// The time filter (uftrace's <c>-t</c>) over a thread's function_graph events as the recorder
/// drains them, pass after pass: an entry is held back until its call proves long enough, or until
/// a callee's does (then its callers are written first, in order, with their own times). Loss marks
/// move to the first event kept after them; the held-back entries before a loss straddle it and are
/// never written (written late, they would seem to follow the loss). Pure: no process, no clock.
/// </summary>
/// <param name="thresholdTicks">the shortest call kept, in TSC ticks</param>
public sealed class TimeFilter(ulong thresholdTicks)
{
    private readonly Dictionary<int, List<(RawEvent Event, bool Written)>> _pending = [];
    private readonly Dictionary<int, ulong> _carriedLoss = [];

    /// <summary>The events of thread <paramref name="tid"/> to write, of those drained now (in order).</summary>
    public List<RawEvent> Filter(int tid, IReadOnlyList<RawEvent> events)
    {
        if (!_pending.TryGetValue(tid, out var stack))
        {
            _pending[tid] = stack = [];
        }
        var kept = new List<RawEvent>();
        var marks = new List<(int At, ulong Lost)>();
        if (_carriedLoss.Remove(tid, out ulong carried))
        {
            marks.Add((0, carried));
        }
        foreach (RawEvent drained in events)
        {
            RawEvent e = drained;
            if (e.LostBefore > 0)
            {
                marks.Add((kept.Count, e.LostBefore));
                stack.Clear();
                e = e with { Info = (uint)e.Info };
            }
            // Frames at this depth or deeper are gone (their exits will not come): forget them.
            while (stack.Count > 0 && stack[^1].Event.Depth >= e.Depth && !(e.IsExit && stack[^1].Event.Depth == e.Depth))
            {
                stack.RemoveAt(stack.Count - 1);
            }
            if (!e.IsExit)
            {
                stack.Add((e, false));
                continue;
            }
            if (stack.Count == 0 || stack[^1].Event.Site != e.Site)
            {
                kept.Add(e); // its entry was written earlier or lost: keep what we know
                continue;
            }
            (RawEvent entry, bool written) = stack[^1];
            stack.RemoveAt(stack.Count - 1);
            if (written || e.Tsc - entry.Tsc >= thresholdTicks)
            {
                for (int i = 0; i < stack.Count; i++)
                {
                    if (!stack[i].Written)
                    {
                        kept.Add(stack[i].Event);
                        stack[i] = (stack[i].Event, true);
                    }
                }
                if (!written)
                {
                    kept.Add(entry);
                }
                kept.Add(e);
            }
        }
        foreach (var group in marks.GroupBy(m => m.At))
        {
            ulong lost = group.Aggregate(0UL, (n, m) => n + m.Lost);
            if (group.Key < kept.Count)
            {
                RawEvent e = kept[group.Key];
                kept[group.Key] = e with { Info = (uint)e.Info | (Math.Min(lost + e.LostBefore, uint.MaxValue) << 32) };
            }
            else
            {
                _carriedLoss[tid] = lost;
            }
        }
        return kept;
    }
}
