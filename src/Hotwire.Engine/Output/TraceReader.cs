using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>A decoded event, ready to print.</summary>
public readonly record struct TraceLine(int Tid, int Pid, string Task, long TimestampNs, string Function, string Module, string Caller, ulong[] Args);

/// <summary>
/// Turns a recording into time-ordered lines: per-thread streams merged by timestamp, sites and
/// callers named from the symbols the recording carries (the target may be long gone).
/// </summary>
public sealed class TraceReader
{
    private readonly Dictionary<int, SiteInfo> _sites;
    private readonly Dictionary<int, ThreadInfo> _threads;
    private readonly List<(ModuleInfo Module, ulong[] Starts)> _modules;
    private readonly ClockCalibration _clock;

    public TraceReader(TraceInfo info)
    {
        Info = info;
        _sites = info.Sites.ToDictionary(s => s.Index);
        _threads = info.Threads.ToDictionary(t => t.Tid);
        _modules = info.Modules.OrderBy(m => m.Start).Select(m => (m, m.Symbols.Select(s => s.Start).ToArray())).ToList();
        _clock = info.Clock.ToCalibration();
    }

    public TraceInfo Info { get; }

    public static (TraceReader Reader, Dictionary<int, List<RawEvent>> Events) Open(string dir)
    {
        TraceInfo info = TraceData.ReadInfo(dir);
        var events = TraceData.ReadEvents(dir, info, out long? truncatedAt);
        return (new TraceReader(info) { TruncatedAt = truncatedAt }, events);
    }

    /// <summary>Where events.bin was cut short, if it was.</summary>
    public long? TruncatedAt { get; private init; }

    /// <summary>All events, merged across threads by timestamp (ties keep per-thread order).</summary>
    public IEnumerable<TraceLine> Lines(Dictionary<int, List<RawEvent>> events, IReadOnlySet<int>? tids = null)
    {
        var queue = new PriorityQueue<(int Tid, int Index), (ulong Tsc, int Tid, int Index)>();
        foreach ((int tid, List<RawEvent> list) in events)
        {
            if (list.Count > 0 && (tids is null || tids.Contains(tid)))
            {
                queue.Enqueue((tid, 0), (list[0].Tsc, tid, 0));
            }
        }
        while (queue.TryDequeue(out var at, out _))
        {
            List<RawEvent> list = events[at.Tid];
            yield return Line(at.Tid, list[at.Index]);
            if (at.Index + 1 < list.Count)
            {
                queue.Enqueue((at.Tid, at.Index + 1), (list[at.Index + 1].Tsc, at.Tid, at.Index + 1));
            }
        }
    }

    public TraceLine Line(int tid, RawEvent e)
    {
        ThreadInfo? thread = _threads.GetValueOrDefault(tid);
        SiteInfo? site = _sites.GetValueOrDefault(e.Site);
        return new TraceLine(
            tid,
            thread?.Pid ?? Info.Pid,
            thread?.Name ?? $"tid-{tid}",
            _clock.ToMonotonicNs(e.Tsc),
            site?.Function ?? $"site#{e.Site}",
            site?.Module ?? "",
            FunctionAt(e.Caller),
            e.Args);
    }

    /// <summary>The name of the function containing <paramref name="address"/> (ftrace prints the parent without offset).</summary>
    public string FunctionAt(ulong address)
    {
        foreach ((ModuleInfo m, ulong[] starts) in _modules)
        {
            if (address < m.Start || address >= m.End)
            {
                continue;
            }
            int i = Array.BinarySearch(starts, address);
            i = i >= 0 ? i : ~i - 1;
            if (i >= 0 && address < m.Symbols[i].Start + Math.Max(m.Symbols[i].Size, 1))
            {
                return m.Symbols[i].Name;
            }
            return $"{Path.GetFileName(m.Path)}+0x{address - m.Start:x}";
        }
        return $"0x{address:x}";
    }
}
