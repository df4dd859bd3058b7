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

/// <summary>An open call of a thread's reconstructed calls.</summary>
public struct Frame
{
    public int Site;

    /// <summary>Its depth in the call tree (0 = no traced caller): its caller's depth + 1.</summary>
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

    /// <summary>Where its return address was (format 4; 0 in older recordings): which stack, which frame.</summary>
    public ulong Slot;

    /// <summary>The depth the tracer recorded.</summary>
    internal int TracerDepth;

    /// <summary>Its caller (the frame running on the thread when it was entered), or −1; see <see cref="ThreadFrames.Parent"/>.</summary>
    internal int Parent;

    /// <summary>Its caller ended first (a coroutine's first frame outlives the call that started it).</summary>
    internal bool ParentGone;

    /// <summary>Its stack was suspended at least once while it was open (another stack ran meanwhile).</summary>
    public bool WasSuspended;
}

/// <summary>
/// One thread's open calls and what reconstruction found on them. Calls run on one or more machine
/// stacks (coroutines, <c>swapcontext</c>, alternate signal stacks): each stack keeps its frames
/// in order, one stack is running, the others are suspended. A frame is named by a handle, valid
/// while it is open.
/// </summary>
public sealed class ThreadFrames
{
    private Frame[] _frames = new Frame[64];
    private readonly Stack<int> _free = new();
    private int _used;

    internal ThreadFrames(int tid) => Tid = tid;

    public int Tid { get; }

    /// <summary>Open frames, on every stack.</summary>
    public int Count { get; private set; }

    /// <summary>The frame of handle <paramref name="frame"/> (as given to <see cref="IFrameSink"/>).</summary>
    public ref Frame this[int frame] => ref _frames[frame];

    /// <summary>
    /// The handle of the caller of <paramref name="frame"/> (the frame running when it was entered),
    /// or −1 for an outermost call. Valid in <see cref="IFrameSink.Enter"/>: a caller may end before
    /// a callee that runs on another stack.
    /// </summary>
    public int Parent(int frame) => _frames[frame].Parent;

    /// <summary>The frame had no traced caller when it was entered.</summary>
    public bool IsOutermost(int frame) => _frames[frame].Parent < 0;

    /// <summary>Events of this thread reconstructed so far, and the timestamp of the last one.</summary>
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

    /// <summary>Switches between machine stacks (a coroutine resumed or suspended).</summary>
    public long Switches { get; internal set; }

    /// <summary>Free for the sink's per-thread state.</summary>
    public object? SinkState { get; set; }

    /// <summary>The stack running now (frames outermost first), and the suspended ones.</summary>
    internal List<int> Running = [];

    internal readonly List<List<int>> Suspended = [];

    /// <summary>Events held back until what they mean is known (see <see cref="CallGraph"/>), from <see cref="BacklogAt"/>.</summary>
    internal readonly List<RawEvent> Backlog = [];

    internal int BacklogAt;

    /// <summary>How far the backlog was searched for the decision its first event waits for.</summary>
    internal int ScannedTo;

    internal int New()
    {
        int handle;
        if (_free.Count > 0)
        {
            handle = _free.Pop();
        }
        else
        {
            if (_used == _frames.Length)
            {
                Array.Resize(ref _frames, _frames.Length * 2);
            }
            handle = _used++;
        }
        Count++;
        return handle;
    }

    internal void Free(int frame)
    {
        _frames[frame].Args = null!;
        _free.Push(frame);
        Count--;
    }

    /// <summary>Every open frame.</summary>
    internal IEnumerable<int> All() => Running.Concat(Suspended.SelectMany(s => s));
}

/// <summary>What a reader does with calls as reconstruction finds them, in each thread's order.</summary>
public interface IFrameSink
{
    /// <summary>A call began: <c>thread[frame]</c>; its traced caller, if any, is <c>thread[thread.Parent(frame)]</c>.</summary>
    void Enter(ThreadFrames thread, int frame);

    /// <summary>
    /// A call ended: <c>thread[frame]</c>, freed after this returns (its callees on the same stack
    /// have ended before it). <paramref name="exitTsc"/> is never before its entry;
    /// <paramref name="value"/> is the return value when <paramref name="end"/> is <see cref="FrameEnd.Returned"/>.
    /// </summary>
    void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value);

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

    /// <summary>
    /// At <paramref name="tsc"/> the thread left the stack whose innermost frame is
    /// <paramref name="suspended"/> (−1: none) for the one whose innermost frame is
    /// <paramref name="resumed"/> (−1: a new stack): both stay open.
    /// </summary>
    void Switch(ThreadFrames thread, ulong tsc, int suspended, int resumed)
    {
    }
}

/// <summary>
/// Rebuilds the calls of a function_graph recording from its entry and exit events, per thread,
/// streaming: memory holds the open frames (and, while a decision waits for later events, at most
/// <see cref="Lookahead"/> events). Robust to what real recordings contain.
/// <para>
/// Each event names its frame's stack slot (format 4): a frame is nested under the frame that was
/// running on the thread when it was entered; frames are kept per machine stack, and an exit ends
/// the frame with its slot, on whichever stack it is (a coroutine's frames are suspended while
/// another stack runs, not ended). Frames newer than it on its own stack were left without
/// returning (unwound: longjmp, an exception, a lost exit). An entry above frames of the running
/// stack (by address) means either that they are gone (longjmp) or that a new stack lies above
/// them (a coroutine stack inside a caller's frame): an entry at one of their slots, or the exit
/// of a frame below them, says gone; an exit of one of them says alive. Until one of those comes
/// (at most <see cref="Lookahead"/> events; none by the end: gone) the thread's events wait.
/// Recordings without slots (format 3 and older) are rebuilt by depth: an entry at depth d
/// closes the open frames at d or deeper (unwound), an exit closes the frame at its depth.
/// An exit with no open frame to match (its entry was lost) is skipped and counted; frames still
/// open at the end close at the recording's end.
/// </para>
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
    /// <summary>Frames whose slots are this close are on the same machine stack (as the tracer judges, docs/graph.md).</summary>
    public const ulong SameStackWindow = 1 << 20;

    /// <summary>Events a thread may hold back while it is not known whether frames are gone or suspended.</summary>
    public const int Lookahead = 1 << 16;

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

    /// <summary>Switches between machine stacks (coroutines).</summary>
    public long Switches => _threads.Values.Sum(t => t.Switches);

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
        int i = 0;
        if (thread.Backlog.Count == 0)
        {
            while (i < events.Length && Process(thread, in events[i], Fate.Unknown))
            {
                i++;
            }
        }
        if (i < events.Length)
        {
            foreach (ref readonly RawEvent e in events[i..])
            {
                thread.Backlog.Add(e);
            }
            Drain(thread, final: false);
        }
        _sink.ChunkDone(thread);
    }

    /// <summary>Closes every frame still open, at the end of the recording (or the thread's last event, if later).</summary>
    public void Finish()
    {
        foreach (ThreadFrames thread in _threads.Values)
        {
            Drain(thread, final: true);
            ulong end = Math.Max(_endTsc, thread.LastTsc);
            // Lost after the thread's last event: no event carries the mark, info.json's count does.
            if (_lostByThread is not null && _lostByThread.GetValueOrDefault(thread.Tid) is ulong lost && lost > thread.LostEvents)
            {
                MarkLoss(thread, end, lost - thread.LostEvents);
            }
            while (thread.Count > 0)
            {
                // Newest first, whatever its stack: callees end before their callers.
                List<int> newest = thread.Running;
                foreach (List<int> s in thread.Suspended)
                {
                    if (s.Count > 0 && (newest.Count == 0 || thread[s[^1]].EntryTsc > thread[newest[^1]].EntryTsc))
                    {
                        newest = s;
                    }
                }
                Close(thread, newest, end, FrameEnd.Unfinished, 0);
            }
        }
    }

    /// <summary>What later events say of frames an entry found itself above: gone, or alive on another stack.</summary>
    private enum Fate
    {
        Unknown,
        Gone,
        Alive,
    }

    private enum Placement
    {
        /// <summary>Called by the running stack's innermost frame, on that stack.</summary>
        Push,

        /// <summary>On a suspended stack (resumed where no traced frame returned), called by its innermost frame.</summary>
        Resume,

        /// <summary>The first frame of a stack not seen before; called by the running stack's innermost frame.</summary>
        NewStack,

        /// <summary>The running stack's frames above the new one are gone (longjmp, an exception): they end, unwound.</summary>
        Unwind,

        /// <summary>Above frames of the running stack that may be gone or alive: later events tell.</summary>
        Ambiguous,
    }

    /// <summary>
    /// Processes the held-back events of <paramref name="thread"/> while their meaning is known; with
    /// <paramref name="final"/> (no more events will come) or a full lookahead, frames still in
    /// doubt are taken as gone.
    /// </summary>
    private void Drain(ThreadFrames thread, bool final)
    {
        List<RawEvent> backlog = thread.Backlog;
        while (thread.BacklogAt < backlog.Count)
        {
            RawEvent e = backlog[thread.BacklogAt];
            if (!Process(thread, in e, Fate.Unknown))
            {
                Fate fate = Scan(thread, in e);
                if (fate == Fate.Unknown)
                {
                    if (!final && backlog.Count - thread.BacklogAt < Lookahead)
                    {
                        break;
                    }
                    fate = Fate.Gone;
                }
                Process(thread, in e, fate);
                thread.ScannedTo = 0;
            }
            thread.BacklogAt++;
        }
        if (thread.BacklogAt == backlog.Count)
        {
            backlog.Clear();
            thread.BacklogAt = 0;
            thread.ScannedTo = 0;
        }
        else if (thread.BacklogAt >= 4096)
        {
            backlog.RemoveRange(0, thread.BacklogAt);
            thread.ScannedTo = Math.Max(thread.ScannedTo - thread.BacklogAt, 0);
            thread.BacklogAt = 0;
        }
    }

    /// <summary>
    /// For the ambiguous entry <paramref name="entry"/> at the head of the backlog: the first later
    /// event that decides whether the running stack's frames above it are gone or alive.
    /// </summary>
    private static Fate Scan(ThreadFrames thread, in RawEvent entry)
    {
        (_, int keep) = Place(thread, in entry);
        List<int> running = thread.Running;
        List<RawEvent> backlog = thread.Backlog;
        for (int i = Math.Max(thread.ScannedTo, thread.BacklogAt + 1); i < backlog.Count; i++)
        {
            RawEvent e = backlog[i];
            for (int level = 0; level < running.Count && e.Slot != 0; level++)
            {
                if (thread[running[level]].Slot != e.Slot)
                {
                    continue;
                }
                if (level >= keep)
                {
                    // One of them returns: it was alive, on a stack the new frame is not on.
                    // Something enters at its slot: its return address was overwritten.
                    return e.Kind == RawEvent.Entry ? Fate.Gone : Fate.Alive;
                }
                if (e.Kind != RawEvent.Entry)
                {
                    return Fate.Gone; // a frame below them returns: those above it on its stack are gone
                }
            }
        }
        thread.ScannedTo = backlog.Count;
        return Fate.Unknown;
    }

    /// <summary>Reconstructs one event; false (and nothing done) when it needs a <paramref name="fate"/> it was not given.</summary>
    private bool Process(ThreadFrames thread, in RawEvent e, Fate fate)
    {
        if (e.Kind == RawEvent.Entry && e.Slot != 0 && fate == Fate.Unknown && Place(thread, in e).How == Placement.Ambiguous)
        {
            return false;
        }
        if (e.LostBefore > 0)
        {
            MarkLoss(thread, e.Tsc, e.LostBefore);
        }
        if (e.Kind == RawEvent.Entry)
        {
            if (e.Slot == 0)
            {
                EnterByDepth(thread, in e);
            }
            else
            {
                Enter(thread, in e, fate);
            }
        }
        else if (e.Slot == 0)
        {
            ExitByDepth(thread, in e);
        }
        else
        {
            Exit(thread, in e);
        }
        thread.Events++;
        thread.LastTsc = e.Tsc;
        return true;
    }

    private void MarkLoss(ThreadFrames thread, ulong tsc, ulong lost)
    {
        foreach (int frame in thread.All())
        {
            thread[frame].Straddles = true;
        }
        thread.LossMarks++;
        thread.LostEvents += lost;
        _sink.Lost(thread, tsc, lost);
    }

    /// <summary>Where an entry goes (see <see cref="Placement"/>); for Resume the suspended stack's index, else the running stack's frames that stay.</summary>
    private static (Placement How, int Index) Place(ThreadFrames thread, in RawEvent e)
    {
        ulong slot = e.Slot;
        List<int> running = thread.Running;
        ulong top = running.Count > 0 ? thread[running[^1]].Slot : 0;
        if (running.Count > 0 && ((slot < top && top - slot < SameStackWindow) || (slot == top && e.Depth > thread[running[^1]].TracerDepth)))
        {
            return (Placement.Push, running.Count);  // the common case; or a tail call (same slot, pushed above by the tracer)
        }
        int below = running.Count - 1;                // the running stack's frame closest above the slot
        while (below >= 0 && thread[running[below]].Slot <= slot)
        {
            below--;
        }
        ulong closest = below >= 0 && thread[running[below]].Slot - slot < SameStackWindow ? thread[running[below]].Slot : ulong.MaxValue;
        int resume = -1;
        for (int k = 0; k < thread.Suspended.Count; k++)
        {
            List<int> s = thread.Suspended[k];
            ulong suspended = s.Count > 0 ? thread[s[^1]].Slot : 0;
            if (suspended > slot && suspended - slot < SameStackWindow && suspended < closest)
            {
                resume = k;
                closest = suspended;
            }
        }
        if (resume >= 0)
        {
            return (Placement.Resume, resume);
        }
        if (running.Count == 0 || (slot > top ? slot - top : top - slot) >= SameStackWindow)
        {
            return (Placement.NewStack, 0);
        }
        for (int level = below + 1; level < running.Count; level++)
        {
            if (thread[running[level]].Slot == slot)
            {
                return (Placement.Unwind, below + 1);   // its return address was overwritten: gone
            }
        }
        return (Placement.Ambiguous, below + 1);
    }

    private void Enter(ThreadFrames thread, in RawEvent e, Fate fate)
    {
        (Placement how, int index) = Place(thread, in e);
        if (how == Placement.Ambiguous)
        {
            how = fate == Fate.Alive ? Placement.NewStack : Placement.Unwind;
        }
        switch (how)
        {
            case Placement.Resume:
                SwitchTo(thread, thread.Suspended[index], e.Tsc);
                break;
            case Placement.NewStack:
                int caller = thread.Running.Count > 0 ? thread.Running[^1] : -1;
                SwitchTo(thread, [], e.Tsc);
                Push(thread, in e, caller);
                return;
            case Placement.Unwind:
                while (thread.Running.Count > index)
                {
                    Close(thread, thread.Running, e.Tsc, FrameEnd.Unwound, 0);
                }
                break;
        }
        Push(thread, in e, thread.Running.Count > 0 ? thread.Running[^1] : -1);
    }

    private void EnterByDepth(ThreadFrames thread, in RawEvent e)
    {
        List<int> running = thread.Running;
        while (running.Count > 0 && thread[running[^1]].TracerDepth >= e.Depth)
        {
            Close(thread, running, e.Tsc, FrameEnd.Unwound, 0);
        }
        Push(thread, in e, running.Count > 0 ? running[^1] : -1);
    }

    private void Push(ThreadFrames thread, in RawEvent e, int caller)
    {
        // Below a frame that straddles a loss, or below nothing seen since one, the caller is not known.
        bool callerLost = caller >= 0 ? thread[caller].Straddles : e.Depth > 0 && thread.LossMarks > 0;
        int handle = thread.New();
        thread[handle] = new Frame
        {
            Site = e.Site,
            // Without slots (or a caller) the tracer's depth, as before; else one below the caller.
            Depth = caller < 0 || e.Slot == 0 ? e.Depth : thread[caller].Depth + 1,
            EntryTsc = e.Tsc,
            Caller = e.Caller,
            Args = e.Args,
            CallerLost = callerLost,
            Slot = e.Slot,
            TracerDepth = e.Depth,
            Parent = caller,
        };
        thread.Running.Add(handle);
        thread.CallerLost += callerLost ? 1 : 0;
        thread.Calls++;
        _sink.Enter(thread, handle);
    }

    /// <summary>The thread leaves the running stack (kept, suspended, unless empty) for <paramref name="stack"/>.</summary>
    private void SwitchTo(ThreadFrames thread, List<int> stack, ulong tsc)
    {
        thread.Suspended.Remove(stack);
        int suspended = -1;
        if (thread.Running.Count > 0)
        {
            suspended = thread.Running[^1];
            thread.Suspended.Add(thread.Running);
            foreach (int frame in thread.Running)
            {
                thread[frame].WasSuspended = true;
            }
        }
        thread.Running = stack;
        if (suspended >= 0 || stack.Count > 0)
        {
            thread.Switches++;
            _sink.Switch(thread, tsc, suspended, stack.Count > 0 ? stack[^1] : -1);
        }
    }

    private void Exit(ThreadFrames thread, in RawEvent e)
    {
        List<int> stack = thread.Running;
        int match = Find(thread, stack, in e);
        for (int k = 0; k < thread.Suspended.Count && match < 0; k++)
        {
            match = Find(thread, thread.Suspended[k], in e);
            if (match >= 0)
            {
                stack = thread.Suspended[k];
                SwitchTo(thread, stack, e.Tsc);   // a suspended frame returns: its stack was resumed
            }
        }
        if (match < 0)
        {
            thread.UnmatchedExits++;
            return;
        }
        while (stack.Count - 1 > match)
        {
            Close(thread, stack, e.Tsc, FrameEnd.Unwound, 0);
        }
        Close(thread, stack, e.Tsc, e.Kind == RawEvent.Unwound ? FrameEnd.Unwound : FrameEnd.Returned, e.Value);
    }

    /// <summary>The innermost frame of <paramref name="stack"/> with the exit's slot and site, or −1.</summary>
    private static int Find(ThreadFrames thread, List<int> stack, in RawEvent e)
    {
        for (int level = stack.Count - 1; level >= 0; level--)
        {
            ref Frame f = ref thread[stack[level]];
            if (f.Slot == e.Slot && f.Site == e.Site)
            {
                return level;
            }
        }
        return -1;
    }

    private void ExitByDepth(ThreadFrames thread, in RawEvent e)
    {
        List<int> running = thread.Running;
        int depth = e.Depth;
        // Depths increase up the stack (an entry closes everything at its depth or deeper).
        int match = running.Count - 1;
        while (match >= 0 && thread[running[match]].TracerDepth > depth)
        {
            match--;
        }
        if (match < 0 || thread[running[match]].TracerDepth != depth || thread[running[match]].Site != e.Site)
        {
            thread.UnmatchedExits++;
            return;
        }
        while (running.Count - 1 > match)
        {
            Close(thread, running, e.Tsc, FrameEnd.Unwound, 0);
        }
        Close(thread, running, e.Tsc, e.Kind == RawEvent.Unwound ? FrameEnd.Unwound : FrameEnd.Returned, e.Value);
    }

    /// <summary>Ends the innermost frame of <paramref name="stack"/>.</summary>
    private void Close(ThreadFrames thread, List<int> stack, ulong tsc, FrameEnd end, ulong value)
    {
        int handle = stack[^1];
        ref Frame f = ref thread[handle];
        ulong exit = Math.Max(tsc, f.EntryTsc);
        if (f.Straddles)
        {
            end = FrameEnd.Lost;
        }
        // A callee still open on another stack (a coroutine this call started): the time it ran
        // until now is time in callees; the rest of it is not this call's.
        for (int k = 0; k <= thread.Suspended.Count && thread.Suspended.Count > 0; k++)
        {
            List<int> other = k < thread.Suspended.Count ? thread.Suspended[k] : thread.Running;
            if (other != stack && other.Count > 0 && thread[other[0]].Parent == handle && !thread[other[0]].ParentGone)
            {
                ref Frame callee = ref thread[other[0]];
                callee.ParentGone = true;
                if (end != FrameEnd.Lost && !callee.Straddles)
                {
                    f.ChildTicks += exit - Math.Min(exit, callee.EntryTsc);
                }
            }
        }
        if (f.Parent >= 0 && !f.ParentGone && end != FrameEnd.Lost)
        {
            ref Frame parent = ref thread[f.Parent];
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
        _sink.Exit(thread, handle, exit, end, value);
        stack.RemoveAt(stack.Count - 1);
        thread.Free(handle);
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
