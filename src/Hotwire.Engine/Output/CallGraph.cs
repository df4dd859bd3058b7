using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>How a reconstructed call ended.</summary>
public enum FrameEnd : byte
{
    /// <summary>Its exit event was recorded.</summary>
    Returned,

    /// <summary>
    /// Left without returning: longjmp or an exception (the tracer's late exit), or its exit was never
    /// seen and a call at its depth or shallower came: closed at that event's time.
    /// </summary>
    Unwound,

    /// <summary>Still running when the recording ended: closed at the recording's end time.</summary>
    Unfinished,

    /// <summary>
    /// Open while its thread lost events (a full buffer): how long it ran and what it called then
    /// are not known. Readers leave it out of times, counts and call paths, and count it.
    /// </summary>
    Lost,
}

/// <summary>An open call on a thread's reconstructed stack.</summary>
public struct Frame
{
    public int Site;

    /// <summary>The depth the tracer recorded (0 = the thread's outermost traced frame).</summary>
    public int Depth;

    public ulong EntryTsc;

    /// <summary>Time spent in traced callees so far (TSC ticks): self time = duration − this.</summary>
    public ulong ChildTicks;

    /// <summary>Callees that ended so far.</summary>
    public int Children;

    /// <summary>The caller's return address (name it with <see cref="TraceReader.FunctionAt"/>).</summary>
    public ulong Caller;

    public ulong[] Args;

    /// <summary>Free for the sink (a call-tree node, for instance).</summary>
    public int Node;

    /// <summary>Its thread lost events while it was open: it will end as <see cref="FrameEnd.Lost"/>.</summary>
    public bool Straddles;

    /// <summary>
    /// Entered after its thread lost events, under a caller that is not known (the frame below it,
    /// if any, straddles the loss): call-path views must not attach it under that frame.
    /// </summary>
    public bool CallerLost;
}

/// <summary>One thread's reconstructed stack and what reconstruction found on it.</summary>
public sealed class ThreadFrames
{
    private Frame[] _stack = new Frame[64];

    internal ThreadFrames(int tid) => Tid = tid;

    public int Tid { get; }

    /// <summary>Open frames: <c>this[0]</c> is the outermost, <c>this[Count - 1]</c> the innermost.</summary>
    public int Count { get; private set; }

    public ref Frame this[int level] => ref _stack[level];

    /// <summary>Events of this thread seen so far, and the timestamp of the last one.</summary>
    public long Events { get; internal set; }

    public ulong LastTsc { get; internal set; }

    public long Calls { get; internal set; }

    public long Unwound { get; internal set; }

    public long Unfinished { get; internal set; }

    /// <summary>Exits whose entry was never seen (lost because a buffer was full): skipped.</summary>
    public long UnmatchedExits { get; internal set; }

    /// <summary>Calls open while the thread lost events: ended as <see cref="FrameEnd.Lost"/>.</summary>
    public long Straddling { get; internal set; }

    /// <summary>Calls entered after a loss under callers that are not known (<see cref="Frame.CallerLost"/>).</summary>
    public long CallerLost { get; internal set; }

    /// <summary>Places in the thread's events where events were lost, and how many were.</summary>
    public long LossMarks { get; internal set; }

    public ulong LostEvents { get; internal set; }

    /// <summary>Free for the sink's per-thread state.</summary>
    public object? SinkState { get; set; }

    internal ref Frame Push()
    {
        if (Count == _stack.Length)
        {
            Array.Resize(ref _stack, _stack.Length * 2);
        }
        return ref _stack[Count++];
    }

    internal void Pop() => _stack[--Count].Args = null!;
}

/// <summary>What a reader does with calls as reconstruction finds them, in each thread's order.</summary>
public interface IFrameSink
{
    /// <summary>A call began: <c>thread[level]</c> (the innermost frame); its traced caller, if any, is <c>thread[level - 1]</c>.</summary>
    void Enter(ThreadFrames thread, int level);

    /// <summary>
    /// A call ended: <c>thread[level]</c> is the innermost frame, popped after this returns.
    /// <paramref name="exitTsc"/> is never before its entry; <paramref name="value"/> is the
    /// return value when <paramref name="end"/> is <see cref="FrameEnd.Returned"/>.
    /// </summary>
    void Exit(ThreadFrames thread, int level, ulong exitTsc, FrameEnd end, ulong value);

    /// <summary>A chunk of <paramref name="thread"/>'s events has been fed.</summary>
    void ChunkDone(ThreadFrames thread)
    {
    }

    /// <summary>
    /// <paramref name="thread"/> lost <paramref name="events"/> events before <paramref name="tsc"/>:
    /// every frame open now straddles the loss (<see cref="Frame.Straddles"/>) and will end as lost.
    /// </summary>
    void Lost(ThreadFrames thread, ulong tsc, ulong events)
    {
    }
}

/// <summary>
/// Rebuilds the calls of a function_graph recording from its entry and exit events, per thread,
/// streaming: memory holds only the open frames. Robust to what real recordings contain: an exit
/// closes the open frame at its depth with its site (frames above it were left without returning:
/// unwound); an entry at depth d closes the open frames at d or deeper (unwound, at the entry's
/// time: longjmp, an exception, or lost exits); an exit with no open frame to match (its entry was
/// lost) is skipped and counted; frames still open at the end close at the recording's end.
/// <para>
/// Where the recording marks that a thread lost events (format 3), the thread's stack is unknown
/// from there: every open frame straddles the loss and ends as <see cref="FrameEnd.Lost"/>; a
/// frame entered afterwards whose traced caller is one of those (or was never seen) has
/// <see cref="Frame.CallerLost"/>. Events lost after a thread's last event (its lost count in
/// info.json exceeds its marks) make the frames open at the end lost rather than unfinished.
/// </para>
/// </summary>
public sealed class CallGraph
{
    private readonly Dictionary<int, ThreadFrames> _threads = [];
    private readonly IReadOnlySet<int>? _tids;
    private readonly IFrameSink _sink;
    private readonly ulong _endTsc;
    private readonly Dictionary<int, ulong>? _lostByThread;

    public CallGraph(TraceInfo info, IReadOnlySet<int>? tids, IFrameSink sink)
    {
        _tids = tids;
        _sink = sink;
        _endTsc = info.Clock.EndTsc;
        if (info.MarksLoss)
        {
            _lostByThread = [];
            foreach (ThreadInfo t in info.Threads)
            {
                _lostByThread[t.Tid] = _lostByThread.GetValueOrDefault(t.Tid) + t.Lost;
            }
        }
    }

    public IReadOnlyCollection<ThreadFrames> Threads => _threads.Values;

    public long Calls => _threads.Values.Sum(t => t.Calls);

    public long Unwound => _threads.Values.Sum(t => t.Unwound);

    public long Unfinished => _threads.Values.Sum(t => t.Unfinished);

    public long UnmatchedExits => _threads.Values.Sum(t => t.UnmatchedExits);

    /// <summary>Calls left out because their thread lost events while they ran.</summary>
    public long Straddling => _threads.Values.Sum(t => t.Straddling);

    /// <summary>Calls whose callers are not known: entered after a loss.</summary>
    public long CallerLost => _threads.Values.Sum(t => t.CallerLost);

    public long LossMarks => _threads.Values.Sum(t => t.LossMarks);

    /// <summary>Where events.bin was cut short, if it was (set by <see cref="Read"/>).</summary>
    public long? TruncatedAt { get; private set; }

    /// <summary>
    /// Streams a recording's events through reconstruction into <paramref name="sink"/>. Decoding
    /// events.bin takes about as long as reconstruction: a second thread decodes while this one
    /// reconstructs, chunks passing between them in a short queue of reused arrays.
    /// </summary>
    public static CallGraph Read(string dir, TraceInfo info, IReadOnlySet<int>? tids, IFrameSink sink)
    {
        RequireGraph(dir, info);
        var graph = new CallGraph(info, tids, sink);
        using var chunks = new BlockingCollection<(int Tid, RawEvent[] Events, int Count)>(boundedCapacity: 16);
        var spare = new ConcurrentBag<RawEvent[]>();
        using var stop = new CancellationTokenSource();
        Exception? failure = null;
        var decoder = new Thread(() =>
        {
            try
            {
                graph.TruncatedAt = TraceData.ReadChunks(dir, info, (tid, chunk) =>
                {
                    if (chunk.Count == 0 || (tids is not null && !tids.Contains(tid)))
                    {
                        return;
                    }
                    if (!spare.TryTake(out RawEvent[]? events) || events.Length < chunk.Count)
                    {
                        events = new RawEvent[Math.Max(chunk.Count, 4096)];
                    }
                    chunk.CopyTo(events);
                    chunks.Add((tid, events, chunk.Count), stop.Token);
                });
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
            }
            catch (Exception e)
            {
                failure = e;
            }
            finally
            {
                chunks.CompleteAdding();
            }
        })
        { IsBackground = true, Name = "hotwire-decode" };
        decoder.Start();
        try
        {
            foreach ((int tid, RawEvent[] events, int count) in chunks.GetConsumingEnumerable())
            {
                graph.Feed(tid, events.AsSpan(0, count));
                spare.Add(events);
            }
        }
        finally
        {
            stop.Cancel();
            decoder.Join();
        }
        if (failure is not null)
        {
            ExceptionDispatchInfo.Throw(failure);
        }
        graph.Finish();
        return graph;
    }

    /// <summary>Refuses recordings without entry and exit events, saying how to make one.</summary>
    public static void RequireGraph(string dir, TraceInfo info, string? reader = null)
    {
        if (info.Tracer == Tracers.FunctionGraph)
        {
            return;
        }
        string purpose = reader is null ? "" : $" for {reader}";
        throw info.Tracer switch
        {
            Tracers.Function => new HotwireException(
                $"{dir} was recorded with the function tracer, which records calls but not their durations or nesting: record with --tracer function_graph{purpose}"),
            Tracers.Profile => new HotwireException(
                $"{dir} was recorded with the profile tracer, which keeps per-function totals but no calls or call tree: record with --tracer function_graph{purpose} (hotwire report reads profiles)"),
            _ => new HotwireException($"{dir} was recorded with an unknown tracer '{info.Tracer}': update Hotwire"),
        };
    }

    public void Feed(int tid, ReadOnlySpan<RawEvent> events)
    {
        if (events.Length == 0 || (_tids is not null && !_tids.Contains(tid)))
        {
            return;
        }
        if (!_threads.TryGetValue(tid, out ThreadFrames? thread))
        {
            _threads[tid] = thread = new ThreadFrames(tid);
        }
        foreach (ref readonly RawEvent e in events)
        {
            if (e.LostBefore > 0)
            {
                MarkLoss(thread, e.Tsc, e.LostBefore);
            }
            if (e.Kind == RawEvent.Entry)
            {
                Enter(thread, in e);
            }
            else
            {
                Exit(thread, in e);
            }
        }
        thread.Events += events.Length;
        thread.LastTsc = events[^1].Tsc;
        _sink.ChunkDone(thread);
    }

    /// <summary>Closes every frame still open, at the end of the recording (or the thread's last event, if later).</summary>
    public void Finish()
    {
        foreach (ThreadFrames thread in _threads.Values)
        {
            ulong end = Math.Max(_endTsc, thread.LastTsc);
            // Lost after the thread's last event: no event carries the mark, info.json's count does.
            if (_lostByThread is not null && _lostByThread.GetValueOrDefault(thread.Tid) is ulong lost && lost > thread.LostEvents)
            {
                MarkLoss(thread, end, lost - thread.LostEvents);
            }
            while (thread.Count > 0)
            {
                Close(thread, end, FrameEnd.Unfinished, 0);
            }
        }
    }

    private void MarkLoss(ThreadFrames thread, ulong tsc, ulong lost)
    {
        for (int i = 0; i < thread.Count; i++)
        {
            thread[i].Straddles = true;
        }
        thread.LossMarks++;
        thread.LostEvents += lost;
        _sink.Lost(thread, tsc, lost);
    }

    private void Enter(ThreadFrames thread, in RawEvent e)
    {
        int depth = e.Depth;
        while (thread.Count > 0 && thread[thread.Count - 1].Depth >= depth)
        {
            Close(thread, e.Tsc, FrameEnd.Unwound, 0);
        }
        // Below a frame that straddles a loss, or below nothing seen since one, the caller is not known.
        bool callerLost = depth > 0 && (thread.Count > 0 ? thread[thread.Count - 1].Straddles : thread.LossMarks > 0);
        ref Frame f = ref thread.Push();
        f.Site = e.Site;
        f.Depth = depth;
        f.EntryTsc = e.Tsc;
        f.ChildTicks = 0;
        f.Children = 0;
        f.Caller = e.Caller;
        f.Args = e.Args;
        f.Node = 0;
        f.Straddles = false;
        f.CallerLost = callerLost;
        thread.CallerLost += callerLost ? 1 : 0;
        thread.Calls++;
        _sink.Enter(thread, thread.Count - 1);
    }

    private void Exit(ThreadFrames thread, in RawEvent e)
    {
        int depth = e.Depth;
        // Depths increase up the stack (an entry closes everything at its depth or deeper).
        int match = thread.Count - 1;
        while (match >= 0 && thread[match].Depth > depth)
        {
            match--;
        }
        if (match < 0 || thread[match].Depth != depth || thread[match].Site != e.Site)
        {
            thread.UnmatchedExits++;
            return;
        }
        while (thread.Count - 1 > match)
        {
            Close(thread, e.Tsc, FrameEnd.Unwound, 0);
        }
        Close(thread, e.Tsc, e.Kind == RawEvent.Unwound ? FrameEnd.Unwound : FrameEnd.Returned, e.Value);
    }

    private void Close(ThreadFrames thread, ulong tsc, FrameEnd end, ulong value)
    {
        int level = thread.Count - 1;
        ref Frame f = ref thread[level];
        ulong exit = Math.Max(tsc, f.EntryTsc);
        if (f.Straddles)
        {
            end = FrameEnd.Lost;
        }
        if (level > 0 && end != FrameEnd.Lost)
        {
            ref Frame parent = ref thread[level - 1];
            parent.ChildTicks += exit - f.EntryTsc;
            parent.Children++;
        }
        if (end == FrameEnd.Lost)
        {
            thread.Straddling++;
        }
        else if (end == FrameEnd.Unwound)
        {
            thread.Unwound++;
        }
        else if (end == FrameEnd.Unfinished)
        {
            thread.Unfinished++;
        }
        _sink.Exit(thread, level, exit, end, value);
        thread.Pop();
    }
}

/// <summary>TSC readings of a recording as CLOCK_MONOTONIC nanoseconds.</summary>
public sealed class TraceTime
{
    private readonly ClockCalibration _clock;
    private readonly double _tscPerNs;

    public TraceTime(ClockInfo clock)
    {
        _clock = clock.ToCalibration();
        _tscPerNs = _clock.TscPerNs;
    }

    public long Ns(ulong tsc) => _clock.ToMonotonicNs(tsc);

    public long DurationNs(ulong ticks) => (long)(ticks / _tscPerNs);
}

/// <summary>Site indexes to function names (events name sites by index).</summary>
public sealed class SiteNames
{
    private readonly SiteInfo?[] _sites;

    public SiteNames(TraceInfo info)
    {
        int size = info.Sites.Count == 0 ? 0 : info.Sites.Max(s => s.Index) + 1;
        _sites = new SiteInfo?[Math.Max(size, 0)];
        foreach (SiteInfo s in info.Sites.Where(s => s.Index >= 0))
        {
            _sites[s.Index] = s;
        }
    }

    /// <summary>One more than the highest site index in the recording.</summary>
    public int Count => _sites.Length;

    public SiteInfo? this[int site] => (uint)site < (uint)_sites.Length ? _sites[site] : null;

    /// <summary>The pseudo-site of call-path views under which calls whose callers were lost hang.</summary>
    public const int LostCallers = -2;

    public const string LostCallersName = "[lost events]";

    public string Function(int site) => this[site]?.Function ?? (site == LostCallers ? LostCallersName : $"site#{site}");

    public string Module(int site) => this[site]?.Module ?? "";

    /// <summary>Sites whose function is <paramref name="name"/>, or matches it when it is a glob.</summary>
    public IReadOnlySet<int> Matching(string name)
    {
        bool glob = Patching.Glob.HasWildcards(name);
        return _sites.Where(s => s is not null && (glob ? Patching.Glob.IsMatch(name, s.Function) : s.Function == name))
            .Select(s => s!.Index)
            .ToHashSet();
    }
}

/// <summary>What a reader says about a recording's gaps, as '#' lines in text or warnings.</summary>
public static class ReaderNotes
{
    /// <summary>Events the recording lost and calls it could not record.</summary>
    public static IEnumerable<string> Recording(TraceInfo info, IReadOnlySet<int>? tids)
    {
        foreach (ThreadInfo t in info.Threads.Where(t => t.Lost > 0 && (tids is null || tids.Contains(t.Tid))))
        {
            yield return $"lost {t.Lost} events in {t.Name}-{t.Tid} (its buffer was full: record with a larger --buffer-size)";
        }
        if (info.LostNoBuffer > 0)
        {
            yield return $"lost {info.LostNoBuffer} events of threads beyond the buffer limit";
        }
        if (!info.MarksLoss && info.Threads.Any(t => t.Lost > 0 && (tids is null || tids.Contains(t.Tid))))
        {
            yield return $"recorded by an older Hotwire (format version {info.Version}), which did not mark where events were lost: calls around a loss may show wrong times and callers";
        }
        if (info.ShadowOverflow > 0)
        {
            yield return $"{info.ShadowOverflow} calls were not recorded: nested deeper than the shadow stack holds";
        }
        if (info.MaxDepth > 0)
        {
            yield return $"recorded with --depth {info.MaxDepth}: deeper calls are not shown";
        }
        if (info.TimeFilterNs > 0)
        {
            yield return $"recorded with --time-filter {info.TimeFilterNs} ns: shorter calls are not shown";
        }
    }

    /// <summary>
    /// The calls a reader left out because events were lost while they ran, and (for call-path
    /// views: graph, flame graphs) those shown under [lost events] because their callers are not known.
    /// </summary>
    public static IEnumerable<string> LeftOut(CallGraph graph, bool callPaths)
    {
        if (graph.Straddling > 0)
        {
            yield return $"{graph.Straddling} calls were left out: their thread lost events while they ran ({graph.LossMarks} places), so their times and callees are not known";
        }
        if (callPaths && graph.CallerLost > 0)
        {
            yield return $"{graph.CallerLost} calls made after lost events, whose callers are not known, are shown under {SiteNames.LostCallersName}";
        }
    }

    /// <summary>What reconstruction had to repair.</summary>
    public static IEnumerable<string> Reconstruction(CallGraph graph)
    {
        if (graph.Unwound > 0)
        {
            yield return $"{graph.Unwound} calls were left without returning (longjmp, an exception, or a lost exit): marked unwound, ended at the next event of their thread";
        }
        if (graph.Unfinished > 0)
        {
            yield return $"{graph.Unfinished} calls were still running when the recording ended: marked unfinished, timed up to the end";
        }
        if (graph.UnmatchedExits > 0)
        {
            yield return $"{graph.UnmatchedExits} exits whose entry is not in the recording were skipped (lost to a full buffer, or made before a fork by the parent process)";
        }
    }
}
