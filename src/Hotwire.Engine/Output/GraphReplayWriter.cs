using System.Globalization;
using System.Text.Json;
using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>The layouts <see cref="GraphReplayWriter"/> prints.</summary>
public enum GraphReplayFormat
{
    /// <summary>ftrace's function_graph <c>trace</c> text, with TASK-TID where ftrace shows the CPU.</summary>
    Ftrace,

    /// <summary><c>uftrace replay</c>'s layout.</summary>
    Uftrace,

    /// <summary>One JSON object per entry and exit.</summary>
    Json,
}

/// <summary>
/// Replays a function_graph recording: calls nested by depth, threads merged by time. A call that
/// returns before anything else happens on its thread is one line (<c>f();</c>), others open with
/// <c>f() {</c> and close with <c>}</c> and their duration. Output streams: a line is printed once
/// every thread that may still have an earlier one has been read past its time.
/// </summary>
public sealed class GraphReplayWriter : IFrameSink
{
    private readonly TraceInfo _info;
    private readonly IReadOnlySet<int>? _tids;
    private readonly GraphReplayFormat _format;
    private readonly TextWriter? _text;
    private readonly Utf8JsonWriter? _json;
    private readonly SiteNames _names;
    private readonly TraceTime _time;
    private readonly TraceReader _callers;
    private readonly Dictionary<int, long> _expected;
    private readonly Dictionary<int, Lines> _threads = [];
    private readonly PriorityQueue<Lines, (ulong Tsc, int Tid)> _merge = new();
    private readonly int _taskWidth;

    public GraphReplayWriter(TraceInfo info, IReadOnlySet<int>? tids, GraphReplayFormat format, TextWriter? text = null, Stream? json = null)
    {
        _info = info;
        _tids = tids;
        _format = format;
        _text = text;
        if (format == GraphReplayFormat.Json)
        {
            _json = new Utf8JsonWriter(json ?? throw new ArgumentNullException(nameof(json)));
        }
        else if (text is null)
        {
            throw new ArgumentNullException(nameof(text));
        }
        _names = new SiteNames(info);
        _time = new TraceTime(info.Clock);
        _callers = new TraceReader(info);
        _expected = info.Threads.Where(t => t.Events > 0 && Selected(t.Tid)).ToDictionary(t => t.Tid, t => t.Events);
        _taskWidth = Math.Max(14, info.Threads.Where(t => Selected(t.Tid)).Select(t => TaskLabel(t.Name, t.Tid).Length).DefaultIfEmpty(0).Max());
    }

    private enum LineKind : byte
    {
        Open,
        Close,
        Leaf,

        /// <summary>The thread lost events here (Value: how many).</summary>
        Lost,

        /// <summary>
        /// The thread switched stacks: the frame of Site was suspended (−1: none), the frame of
        /// Value resumed (−1: a new stack); Depth is where the lines that follow are.
        /// </summary>
        Switch,
    }

    /// <summary>Prints the header: what was recorded and what was lost.</summary>
    public void WriteHeader()
    {
        long shown = _info.Threads.Where(t => Selected(t.Tid)).Sum(t => t.Events);
        if (_json is { } j)
        {
            j.WriteStartObject();
            j.WriteString("tracer", Tracers.FunctionGraph);
            j.WriteNumber("pid", _info.Pid);
            j.WriteNumber("entriesWritten", _info.TotalEvents);
            j.WriteNumber("lost", _info.TotalLost);
            j.WriteStartArray("events");
            return;
        }
        TextWriter w = _text!;
        if (_format == GraphReplayFormat.Ftrace)
        {
            w.Write("# tracer: function_graph\n#\n");
        }
        w.Write($"# entries-in-buffer/entries-written: {shown}/{_info.TotalEvents + (long)_info.TotalLost}   #lost: {_info.TotalLost}   #threads: {_info.Threads.Count(t => Selected(t.Tid))}\n");
        foreach (string note in ReaderNotes.Recording(_info, _tids))
        {
            w.Write($"# {note}\n");
        }
        w.Write("#\n");
        if (_format == GraphReplayFormat.Uftrace)
        {
            w.Write("# DURATION     TID     FUNCTION\n");
            return;
        }
        // Columns as ftrace's print_graph_headers_flags, with TASK-TID where it has CPU.
        string task = Center("TASK-TID", _taskWidth);
        string ticks = Center("|   |", _taskWidth);
        w.Write($"#{task}    DURATION                  FUNCTION CALLS\n");
        w.Write($"#{ticks}     |   |                     |   |   |   |\n");
    }

    /// <summary>Prints what is left once reconstruction finished, then what it had to repair.</summary>
    public void WriteFooter(CallGraph graph)
    {
        Flush(ulong.MaxValue);
        if (_json is { } j)
        {
            j.WriteEndArray();
            j.WriteNumber("unwound", graph.Unwound);
            j.WriteNumber("unfinished", graph.Unfinished);
            j.WriteNumber("unmatchedExits", graph.UnmatchedExits);
            j.WriteNumber("stackSwitches", graph.Switches);
            j.WriteNumber("leftOutLost", graph.Straddling);
            j.WriteEndObject();
            j.Flush();
            return;
        }
        List<string> notes = ReaderNotes.LeftOut(graph, callPaths: false).Concat(ReaderNotes.Reconstruction(graph)).ToList();
        if (notes.Count > 0)
        {
            _text!.Write("#\n");
            foreach (string note in notes)
            {
                _text.Write($"# {note}\n");
            }
        }
    }

    public void Enter(ThreadFrames thread, int frame)
    {
        Lines t = LinesOf(thread);
        if (t.HasPending)
        {
            t.Queue.Enqueue(t.Pending with { Kind = LineKind.Open });
        }
        ref Frame f = ref thread[frame];
        var entry = new Line { Tsc = f.EntryTsc, Site = f.Site, Depth = f.Depth, Args = f.Args, Caller = f.Caller };
        if (_format == GraphReplayFormat.Json)
        {
            t.Queue.Enqueue(entry); // JSON keeps entries and exits apart, every event at its own time
            return;
        }
        t.Pending = entry;
        t.HasPending = true;
    }

    public void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value)
    {
        Lines t = LinesOf(thread);
        ref Frame f = ref thread[frame];
        ulong ticks = exitTsc - f.EntryTsc;
        if (t.HasPending)
        {
            // Nothing happened on this thread between entry and exit: one line, as ftrace and uftrace merge leaves.
            t.Queue.Enqueue(t.Pending with { Kind = LineKind.Leaf, Ticks = ticks, End = end, Value = value });
            t.HasPending = false;
        }
        else
        {
            t.Queue.Enqueue(new Line { Kind = LineKind.Close, Tsc = exitTsc, Site = f.Site, Depth = f.Depth, Ticks = ticks, End = end, Value = value, Named = f.WasSuspended });
        }
    }

    public void Lost(ThreadFrames thread, ulong tsc, ulong events)
    {
        Lines t = LinesOf(thread);
        if (t.HasPending)
        {
            t.Queue.Enqueue(t.Pending with { Kind = LineKind.Open }); // it straddles the loss: it will close as lost
            t.HasPending = false;
        }
        t.Queue.Enqueue(new Line { Kind = LineKind.Lost, Tsc = tsc, Value = events });
    }

    public void Switch(ThreadFrames thread, ulong tsc, int suspended, int resumed)
    {
        Lines t = LinesOf(thread);
        if (t.HasPending)
        {
            t.Queue.Enqueue(t.Pending with { Kind = LineKind.Open }); // it stays open on the stack left
            t.HasPending = false;
        }
        int depth = resumed >= 0 ? thread[resumed].Depth + 1 : suspended >= 0 ? thread[suspended].Depth + 1 : 0;
        t.Queue.Enqueue(new Line
        {
            Kind = LineKind.Switch,
            Tsc = tsc,
            Site = suspended >= 0 ? thread[suspended].Site : -1,
            Value = resumed >= 0 ? (ulong)thread[resumed].Site : ulong.MaxValue,
            Depth = depth,
        });
    }

    /// <summary>What a switch line says: <c>/* stack switch: a suspended, b resumed */</c>.</summary>
    private string SwitchText(in Line l)
    {
        string suspended = l.Site >= 0 ? $"{_names.Function(l.Site)} suspended" : "";
        string resumed = l.Value != ulong.MaxValue ? $"{_names.Function((int)l.Value)} resumed" : "a new stack begins";
        return $"/* stack switch: {suspended}{(suspended.Length > 0 ? ", " : "")}{resumed} */";
    }

    public void ChunkDone(ThreadFrames thread)
    {
        // Every line earlier than what each unfinished thread has reached can be printed.
        ulong watermark = ulong.MaxValue;
        foreach ((int tid, long expected) in _expected)
        {
            if (!_threads.TryGetValue(tid, out Lines? t))
            {
                return; // a thread not read yet may start before anything read so far
            }
            if (t.Frames.Events < expected || t.HasPending)
            {
                watermark = Math.Min(watermark, t.HasPending ? t.Pending.Tsc : t.Frames.LastTsc);
            }
        }
        Flush(watermark);
    }

    private bool Selected(int tid) => _tids is null || _tids.Contains(tid);

    private Lines LinesOf(ThreadFrames thread)
    {
        if (thread.SinkState is Lines known)
        {
            return known;
        }
        ThreadInfo? info = _info.Threads.Find(t => t.Tid == thread.Tid);
        var lines = new Lines(thread, info?.Pid ?? _info.Pid, Center(TaskLabel(info?.Name ?? "tid", thread.Tid), _taskWidth), info?.Name ?? $"tid-{thread.Tid}");
        _threads[thread.Tid] = lines;
        thread.SinkState = lines;
        return lines;
    }

    private void Flush(ulong watermark)
    {
        _merge.Clear();
        foreach (Lines t in _threads.Values)
        {
            if (t.Queue.TryPeek(out Line head) && head.Tsc <= watermark)
            {
                _merge.Enqueue(t, (head.Tsc, t.Tid));
            }
        }
        while (_merge.TryDequeue(out Lines? t, out _))
        {
            Line line = t.Queue.Dequeue();
            Write(t, in line);
            if (t.Queue.TryPeek(out Line next) && next.Tsc <= watermark)
            {
                _merge.Enqueue(t, (next.Tsc, t.Tid));
            }
        }
    }

    private void Write(Lines t, in Line l)
    {
        switch (_format)
        {
            case GraphReplayFormat.Ftrace:
                WriteFtrace(t, in l);
                break;
            case GraphReplayFormat.Uftrace:
                WriteUftrace(t, in l);
                break;
            default:
                WriteJson(t, in l);
                if (_json!.BytesPending > 1 << 16)
                {
                    _json.Flush(); // Utf8JsonWriter holds everything until flushed
                }
                break;
        }
    }

    private void WriteFtrace(Lines t, in Line l)
    {
        TextWriter w = _text!;
        w.Write(' ');
        w.Write(t.Label);
        w.Write(" | ");
        if (l.Kind == LineKind.Lost)
        {
            w.Write($"              |  /* lost {l.Value} events: the calls open here are left out */\n");
            return;
        }
        if (l.Kind == LineKind.Switch)
        {
            w.Write("              |  ");
            Indent(w, l.Depth);
            w.Write(SwitchText(in l));
            w.Write('\n');
            return;
        }
        if (l.Kind == LineKind.Open || l.End == FrameEnd.Lost)
        {
            w.Write("              |  ");
        }
        else
        {
            w.Write(FtraceDuration(_time.DurationNs(l.Ticks)));
            w.Write("|  ");
        }
        Indent(w, l.Depth);
        string name = _names.Function(l.Site);
        switch (l.Kind)
        {
            case LineKind.Open:
                WriteCall(w, name, l.Args);
                w.Write(" {\n");
                break;
            case LineKind.Leaf:
                WriteCall(w, name, l.Args);
                w.Write(';');
                w.Write(l.End switch
                {
                    FrameEnd.Lost => " /* lost */",
                    FrameEnd.Unwound => " /* unwound */",
                    FrameEnd.Unfinished => " /* unfinished */",
                    _ => _info.Retval ? $" /* = {KernelRetval(l.Value)} */" : "",
                });
                w.Write('\n');
                break;
            default:
                w.Write('}');
                w.Write(l.End switch
                {
                    FrameEnd.Lost => $" /* {name} lost */",
                    FrameEnd.Unwound => $" /* {name} unwound */",
                    FrameEnd.Unfinished => $" /* {name} unfinished */",
                    _ => _info.Retval ? $" /* {name} = {KernelRetval(l.Value)} */" : l.Named ? $" /* {name} */" : "",
                });
                w.Write('\n');
                break;
        }
    }

    private void WriteUftrace(Lines t, in Line l)
    {
        TextWriter w = _text!;
        w.Write(' ');
        w.Write(l.Kind is LineKind.Open or LineKind.Lost or LineKind.Switch || l.End == FrameEnd.Lost ? "          " : TimeUnits.Format(_time.DurationNs(l.Ticks)));
        w.Write(" [");
        w.Write(t.Tid.ToString(CultureInfo.InvariantCulture).PadLeft(6));
        w.Write("] | ");
        if (l.Kind == LineKind.Lost)
        {
            w.Write($"/* lost {l.Value} events: the calls open here are left out */\n");
            return;
        }
        if (l.Kind == LineKind.Switch)
        {
            Indent(w, l.Depth);
            w.Write(SwitchText(in l));
            w.Write('\n');
            return;
        }
        Indent(w, l.Depth);
        string name = _names.Function(l.Site);
        switch (l.Kind)
        {
            case LineKind.Open:
                WriteCall(w, name, l.Args);
                w.Write(" {\n");
                break;
            case LineKind.Leaf:
                WriteCall(w, name, l.Args);
                if (l.End == FrameEnd.Returned && _info.Retval)
                {
                    w.Write($" = {FunctionTraceWriter.Arg(l.Value)}");
                }
                w.Write(l.End switch
                {
                    FrameEnd.Lost => "; /* lost */\n",
                    FrameEnd.Unwound => "; /* unwound */\n",
                    FrameEnd.Unfinished => "; /* unfinished */\n",
                    _ => ";\n",
                });
                break;
            default:
                w.Write('}');
                if (l.End == FrameEnd.Returned && _info.Retval)
                {
                    w.Write($" = {FunctionTraceWriter.Arg(l.Value)};");
                }
                w.Write(l.End switch
                {
                    FrameEnd.Lost => $" /* {name} (lost) */\n",
                    FrameEnd.Unwound => $" /* {name} (unwound) */\n",
                    FrameEnd.Unfinished => $" /* {name} (unfinished) */\n",
                    _ => $" /* {name} */\n",
                });
                break;
        }
    }

    private void WriteJson(Lines t, in Line l)
    {
        Utf8JsonWriter j = _json!;
        if (l.Kind == LineKind.Lost)
        {
            JsonStart(j, t, "lost", l.Tsc);
            j.WriteNumber("events", l.Value);
            j.WriteEndObject();
            return;
        }
        if (l.Kind == LineKind.Switch)
        {
            JsonStart(j, t, "switch", l.Tsc);
            if (l.Site >= 0)
            {
                j.WriteString("suspended", _names.Function(l.Site));
            }
            if (l.Value != ulong.MaxValue)
            {
                j.WriteString("resumed", _names.Function((int)l.Value));
            }
            j.WriteEndObject();
            return;
        }
        if (l.Kind != LineKind.Close)
        {
            JsonEvent(j, t, "entry", l.Tsc, l.Site, l.Depth);
            j.WriteString("caller", _callers.FunctionAt(l.Caller));
            if (l.Args is { Length: > 0 })
            {
                j.WriteStartArray("args");
                foreach (ulong a in l.Args)
                {
                    j.WriteNumberValue((long)a);
                }
                j.WriteEndArray();
            }
            j.WriteEndObject();
        }
        if (l.Kind != LineKind.Open)
        {
            JsonEvent(j, t, "exit", l.Kind == LineKind.Leaf ? l.Tsc + l.Ticks : l.Tsc, l.Site, l.Depth);
            if (l.End != FrameEnd.Lost)
            {
                j.WriteNumber("durationNs", _time.DurationNs(l.Ticks));
            }
            j.WriteString("end", l.End switch { FrameEnd.Unwound => "unwound", FrameEnd.Unfinished => "unfinished", FrameEnd.Lost => "lost", _ => "returned" });
            if (l.End == FrameEnd.Returned && _info.Retval)
            {
                j.WriteNumber("retval", (long)l.Value);
            }
            j.WriteEndObject();
        }
    }

    // Opens an event object with the fields every event has: type, task, tid, pid, timestamp.
    private void JsonStart(Utf8JsonWriter j, Lines t, string type, ulong tsc)
    {
        j.WriteStartObject();
        j.WriteString("type", type);
        j.WriteString("task", t.Name);
        j.WriteNumber("tid", t.Tid);
        j.WriteNumber("pid", t.Pid);
        j.WriteNumber("timestampNs", _time.Ns(tsc));
    }

    private void JsonEvent(Utf8JsonWriter j, Lines t, string type, ulong tsc, int site, int depth)
    {
        JsonStart(j, t, type, tsc);
        j.WriteString("function", _names.Function(site));
        j.WriteString("module", _names.Module(site));
        j.WriteNumber("depth", depth);
    }

    private static void WriteCall(TextWriter w, string name, ulong[]? args)
    {
        w.Write(name);
        if (name.EndsWith(')') && args is not { Length: > 0 })
        {
            return; // a demangled C++ name brings its parameter list: catcher(long)
        }
        w.Write('(');
        if (args is not null)
        {
            for (int i = 0; i < args.Length; i++)
            {
                if (i > 0)
                {
                    w.Write(", ");
                }
                w.Write(FunctionTraceWriter.Arg(args[i]));
            }
        }
        w.Write(')');
    }

    private static void Indent(TextWriter w, int depth)
    {
        for (int i = 0; i < depth; i++)
        {
            w.Write("  ");
        }
    }

    private static string TaskLabel(string name, int tid) => $"{(name.Length > 16 ? name[..16] : name)}-{tid}";

    private static string Center(string s, int width)
    {
        int spaces = Math.Max(0, width - s.Length);
        return new string(' ', spaces / 2) + s + new string(' ', spaces - spaces / 2);
    }

    /// <summary>A return value as funcgraph-retval prints it: an error code in decimal, anything else in hex.</summary>
    public static string KernelRetval(ulong value)
    {
        long signed = (long)value;
        return signed is >= -4095 and < 0
            ? signed.ToString(CultureInfo.InvariantCulture)
            : "0x" + value.ToString("x", CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// ftrace's duration column (14 characters): the overhead mark, microseconds with up to three
    /// decimals so that the number keeps to 7 digits, " us", padded (as trace_print_graph_duration).
    /// </summary>
    public static string FtraceDuration(long ns)
    {
        ns = Math.Max(ns, 0);
        char mark = ns switch
        {
            > 1_000_000_000 => '$',
            > 100_000_000 => '@',
            > 10_000_000 => '*',
            > 1_000_000 => '#',
            > 100_000 => '!',
            > 10_000 => '+',
            _ => ' ',
        };
        string usecs = (ns / 1000).ToString(CultureInfo.InvariantCulture);
        string number = usecs;
        if (usecs.Length < 7)
        {
            string nsecs = (ns % 1000).ToString("D3", CultureInfo.InvariantCulture);
            number += "." + nsecs[..Math.Min(3, 7 - usecs.Length)];
        }
        return $"{mark} {number} us ".PadRight(14);
    }

    private struct Line
    {
        public ulong Tsc;
        public ulong Ticks;
        public ulong Value;
        public ulong Caller;
        public ulong[]? Args;
        public int Site;
        public int Depth;
        public LineKind Kind;
        public FrameEnd End;

        /// <summary>A close far from its open (another stack ran between): named, as uftrace's tails.</summary>
        public bool Named;
    }

    /// <summary>A thread's lines not printed yet, and its entry that may still turn out to be a leaf.</summary>
    private sealed class Lines(ThreadFrames frames, int pid, string label, string name)
    {
        public ThreadFrames Frames { get; } = frames;

        public int Tid => Frames.Tid;

        public int Pid { get; } = pid;

        public string Label { get; } = label;

        public string Name { get; } = name;

        public Queue<Line> Queue { get; } = new();

        public bool HasPending { get; set; }

        public Line Pending { get; set; }
    }
}

/// <summary>uftrace's time column: three decimals in the largest unit that keeps the number under 1000.</summary>
public static class TimeUnits
{
    private static readonly string[] s_units = ["us", "ms", " s", " m", " h"];
    private static readonly long[] s_limits = [1000, 1000, 1000, 60, 60, long.MaxValue];

    /// <summary>Ten characters: <c>"  1.234 us"</c>, <c>" 10.293 ms"</c>.</summary>
    public static string Format(long ns)
    {
        long value = Math.Max(ns, 0);
        long fraction = 0;
        int unit = 0;
        for (; unit < s_units.Length; unit++)
        {
            fraction = value % s_limits[unit];
            value /= s_limits[unit];
            if (value < s_limits[unit + 1])
            {
                break;
            }
        }
        unit = Math.Min(unit, s_units.Length - 1);
        return $"{value,3}.{fraction:D3} {s_units[unit]}";
    }
}
