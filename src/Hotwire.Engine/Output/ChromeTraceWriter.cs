using System.Text.Json;
using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>
/// The Chrome trace-event format (what Perfetto and chrome://tracing open): one complete ("X")
/// event per call, written as the call ends, with ts and dur in microseconds of CLOCK_MONOTONIC
/// (three decimals: nanoseconds), and "M" events naming processes and threads.
/// </summary>
public sealed class ChromeTraceWriter : IFrameSink
{
    private const int FlushBytes = 1 << 16;

    private readonly Utf8JsonWriter _json;
    private readonly TraceInfo _info;
    private readonly IReadOnlySet<int>? _tids;
    private readonly SiteNames _names;
    private readonly TraceTime _time;
    private readonly JsonEncodedText?[] _encodedNames;
    private readonly JsonEncodedText _ph = JsonEncodedText.Encode("ph");
    private readonly JsonEncodedText _x = JsonEncodedText.Encode("X");
    private readonly JsonEncodedText _name = JsonEncodedText.Encode("name");
    private readonly JsonEncodedText _cat = JsonEncodedText.Encode("cat");
    private readonly JsonEncodedText _function = JsonEncodedText.Encode("function");
    private readonly JsonEncodedText _ts = JsonEncodedText.Encode("ts");
    private readonly JsonEncodedText _dur = JsonEncodedText.Encode("dur");
    private readonly JsonEncodedText _pid = JsonEncodedText.Encode("pid");
    private readonly JsonEncodedText _tid = JsonEncodedText.Encode("tid");

    public ChromeTraceWriter(TraceInfo info, IReadOnlySet<int>? tids, Stream output)
    {
        _info = info;
        _tids = tids;
        _names = new SiteNames(info);
        _time = new TraceTime(info.Clock);
        _encodedNames = new JsonEncodedText?[_names.Count];
        _json = new Utf8JsonWriter(output);
    }

    /// <summary>Opens the event array and names the processes and threads.</summary>
    public void WriteStart()
    {
        _json.WriteStartObject();
        _json.WriteStartArray("traceEvents");
        string program = Path.GetFileName(_info.Command.Split(' ', 2)[0]);
        var threads = _info.Threads.Where(t => _tids is null || _tids.Contains(t.Tid)).ToList();
        foreach (int pid in threads.Select(t => t.Pid == 0 ? _info.Pid : t.Pid).Append(_info.Pid).Distinct())
        {
            Metadata("process_name", pid, pid, pid == _info.Pid ? program : $"{program} (child {pid})");
        }
        foreach (ThreadInfo t in threads)
        {
            Metadata("thread_name", t.Pid == 0 ? _info.Pid : t.Pid, t.Tid, t.Name);
        }
    }

    public void Enter(ThreadFrames thread, int frame)
    {
    }

    public void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value)
    {
        if (end == FrameEnd.Lost)
        {
            return; // neither its duration nor its place in the stack is known
        }
        ref Frame f = ref thread[frame];
        thread.SinkState ??= _info.Threads.Find(t => t.Tid == thread.Tid) is { Pid: not 0 } known ? known.Pid : _info.Pid;
        long entryNs = _time.Ns(f.EntryTsc);
        long exitNs = _time.Ns(exitTsc);
        Utf8JsonWriter j = _json;
        j.WriteStartObject();
        j.WriteString(_name, NameOf(f.Site));
        j.WriteString(_cat, _function);
        j.WriteString(_ph, _x);
        j.WriteNumber(_ts, entryNs / 1000.0);
        j.WriteNumber(_dur, (exitNs - entryNs) / 1000.0);
        j.WriteNumber(_pid, (int)thread.SinkState);
        j.WriteNumber(_tid, thread.Tid);
        bool retval = end == FrameEnd.Returned && _info.Retval;
        if (end != FrameEnd.Returned || retval || f.Args is { Length: > 0 })
        {
            j.WriteStartObject("args");
            if (end != FrameEnd.Returned)
            {
                j.WriteString("end", end == FrameEnd.Unwound ? "unwound" : "unfinished");
            }
            if (retval)
            {
                j.WriteString("retval", "0x" + value.ToString("x", System.Globalization.CultureInfo.InvariantCulture));
            }
            if (f.Args is { Length: > 0 })
            {
                j.WriteStartArray("args");
                foreach (ulong a in f.Args)
                {
                    j.WriteNumberValue((long)a);
                }
                j.WriteEndArray();
            }
            j.WriteEndObject();
        }
        j.WriteEndObject();
        if (j.BytesPending > FlushBytes)
        {
            j.Flush(); // Utf8JsonWriter holds everything until flushed
        }
    }

    /// <summary>Closes the array and says what the recording lost, then flushes.</summary>
    public void WriteEnd(CallGraph graph)
    {
        _json.WriteEndArray();
        _json.WriteString("displayTimeUnit", "ns");
        _json.WriteStartObject("otherData");
        _json.WriteString("source", "hotwire");
        _json.WriteString("command", _info.Command);
        _json.WriteNumber("lostEvents", _info.TotalLost);
        _json.WriteNumber("unwound", graph.Unwound);
        _json.WriteNumber("unfinished", graph.Unfinished);
        _json.WriteNumber("unmatchedExits", graph.UnmatchedExits);
        _json.WriteNumber("leftOutLost", graph.Straddling);
        _json.WriteEndObject();
        _json.WriteEndObject();
        _json.Flush();
    }

    private JsonEncodedText NameOf(int site)
    {
        if ((uint)site < (uint)_encodedNames.Length)
        {
            return _encodedNames[site] ??= JsonEncodedText.Encode(_names.Function(site));
        }
        return JsonEncodedText.Encode(_names.Function(site));
    }

    private void Metadata(string kind, int pid, int tid, string name)
    {
        _json.WriteStartObject();
        _json.WriteString("name", kind);
        _json.WriteString("ph", "M");
        _json.WriteNumber("pid", pid);
        _json.WriteNumber("tid", tid);
        _json.WriteStartObject("args");
        _json.WriteString("name", name);
        _json.WriteEndObject();
        _json.WriteEndObject();
    }
}
