using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>A decoded event, ready to print; <paramref name="LostBefore"/>: events its thread lost just before it.</summary>
public readonly record struct TraceLine(int Tid, int Pid, string Task, long TimestampNs, string Function, string Module, string Caller, ulong[] Args, uint LostBefore = 0);

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

    /// <summary>
    /// All events of <paramref name="chunks"/>, merged across threads by timestamp, in bounded
    /// memory: each thread holds one decoded chunk (at most 4,096 events) at a time, read when its
    /// previous one is used up. 100 M events replay in the memory of a few chunks per thread.
    /// </summary>
    public IEnumerable<TraceLine> Stream(string dir, IReadOnlyList<TraceData.ChunkRef> chunks, IReadOnlySet<int>? tids = null)
    {
        var perThread = new Dictionary<int, Queue<TraceData.ChunkRef>>();
        foreach (TraceData.ChunkRef c in chunks)
        {
            if (c.Count > 0 && (tids is null || tids.Contains(c.Tid)))
            {
                if (!perThread.TryGetValue(c.Tid, out Queue<TraceData.ChunkRef>? q))
                {
                    perThread[c.Tid] = q = new Queue<TraceData.ChunkRef>();
                }
                q.Enqueue(c);
            }
        }
        using var stream = new FileStream(Path.Combine(dir, TraceData.EventsFile), FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        byte[] buffer = new byte[1 << 16];
        var current = new Dictionary<int, (List<RawEvent> Events, int Next)>();
        var queue = new PriorityQueue<int, (ulong Tsc, int Tid)>();
        bool Load(int tid)
        {
            List<RawEvent> events = current.TryGetValue(tid, out var c) ? c.Events : new List<RawEvent>(4096);
            if (!perThread[tid].TryDequeue(out TraceData.ChunkRef next))
            {
                current.Remove(tid);
                return false;
            }
            TraceData.ReadChunk(stream, Info, next, ref buffer, events);
            current[tid] = (events, 0);
            return events.Count > 0;
        }
        foreach (int tid in perThread.Keys)
        {
            if (Load(tid))
            {
                queue.Enqueue(tid, (current[tid].Events[0].Tsc, tid));
            }
        }
        while (queue.TryDequeue(out int tid, out _))
        {
            (List<RawEvent> events, int at) = current[tid];
            yield return Line(tid, events[at]);
            if (at + 1 < events.Count)
            {
                current[tid] = (events, at + 1);
                queue.Enqueue(tid, (events[at + 1].Tsc, tid));
            }
            else if (Load(tid))
            {
                queue.Enqueue(tid, (current[tid].Events[0].Tsc, tid));
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
            e.Args,
            e.LostBefore);
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
