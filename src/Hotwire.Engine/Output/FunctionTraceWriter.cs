using System.Globalization;
using System.Text;
using System.Text.Json;
using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>The ftrace `trace` text of the function tracer, and a JSON form of the same events.</summary>
public static class FunctionTraceWriter
{
    public static void WriteHeader(TextWriter w, TraceInfo info, long shown)
    {
        w.Write("# tracer: function\n#\n");
        w.Write($"# entries-in-buffer/entries-written: {shown}/{info.TotalEvents + (long)info.TotalLost}   #lost: {info.TotalLost}   #threads: {info.Threads.Count}\n");
        foreach (ThreadInfo t in info.Threads.Where(t => t.Lost > 0))
        {
            w.Write($"# lost {t.Lost} events in {t.Name}-{t.Tid} (its buffer was full: record with a larger --buffer-size)\n");
        }
        if (info.LostNoBuffer > 0)
        {
            w.Write($"# lost {info.LostNoBuffer} events of threads beyond the buffer limit\n");
        }
        w.Write("#\n#            TASK-TID         TIMESTAMP  FUNCTION\n#               | |               |         |\n");
    }

    public static string Format(TraceLine l)
    {
        var b = new StringBuilder(96);
        string task = l.Task.Length > 16 ? l.Task[..16] : l.Task;
        if (l.LostBefore > 0)
        {
            // Where the thread's buffer was full, as ftrace's "CPU:N [LOST M EVENTS]".
            b.Append(task.PadLeft(16)).Append('-').Append(l.Tid.ToString(CultureInfo.InvariantCulture).PadRight(7))
                .Append(" [LOST ").Append(l.LostBefore.ToString(CultureInfo.InvariantCulture)).Append(" EVENTS]\n");
        }
        b.Append(task.PadLeft(16)).Append('-').Append(l.Tid.ToString(CultureInfo.InvariantCulture).PadRight(7)).Append(' ');
        b.Append(Seconds(l.TimestampNs).PadLeft(16)).Append(": ").Append(l.Function);
        if (l.Args.Length > 0)
        {
            b.Append('(');
            for (int i = 0; i < l.Args.Length; i++)
            {
                b.Append(i > 0 ? ", " : "").Append(Arg(l.Args[i]));
            }
            b.Append(')');
        }
        return b.Append(" <-").Append(l.Caller).ToString();
    }

    public static string Seconds(long ns) => (ns / 1_000_000_000).ToString(CultureInfo.InvariantCulture) + "." + (ns % 1_000_000_000 / 1000).ToString("D6", CultureInfo.InvariantCulture);

    /// <summary>Small integers in decimal (as C would print a long), anything else in hex.</summary>
    public static string Arg(ulong v)
    {
        long s = (long)v;
        return s is > -1_000_000_000 and < 1_000_000_000 ? s.ToString(CultureInfo.InvariantCulture) : "0x" + v.ToString("x", CultureInfo.InvariantCulture);
    }

    public static void WriteJson(Stream output, TraceInfo info, IEnumerable<TraceLine> lines)
    {
        using var w = new Utf8JsonWriter(output);
        w.WriteStartObject();
        w.WriteString("tracer", "function");
        w.WriteNumber("pid", info.Pid);
        w.WriteNumber("entriesWritten", info.TotalEvents);
        w.WriteNumber("lost", info.TotalLost);
        w.WriteStartArray("events");
        foreach (TraceLine l in lines)
        {
            w.WriteStartObject();
            w.WriteString("task", l.Task);
            w.WriteNumber("tid", l.Tid);
            w.WriteNumber("pid", l.Pid);
            w.WriteNumber("timestampNs", l.TimestampNs);
            w.WriteString("function", l.Function);
            w.WriteString("module", l.Module);
            w.WriteString("caller", l.Caller);
            if (l.LostBefore > 0)
            {
                w.WriteNumber("lostBefore", l.LostBefore);
            }
            if (l.Args.Length > 0)
            {
                w.WriteStartArray("args");
                foreach (ulong a in l.Args)
                {
                    w.WriteNumberValue((long)a);
                }
                w.WriteEndArray();
            }
            w.WriteEndObject();
            if (w.BytesPending > 1 << 16)
            {
                w.Flush(); // Utf8JsonWriter keeps everything until flushed: stream it
            }
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
