using System.Globalization;
using System.Text;
using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>
/// Every event as stored, chunk by chunk, in uftrace dump's manner: for looking at what a recording
/// holds (or at where a damaged one goes wrong) rather than at what the program did.
/// </summary>
public static class RawDumpWriter
{
    /// <summary>Writes the events; returns where events.bin was cut short, if it was.</summary>
    public static long? Write(TextWriter w, string dir, TraceInfo info, IReadOnlySet<int>? tids)
    {
        var names = new SiteNames(info);
        var time = new TraceTime(info.Clock);
        var callers = new TraceReader(info);
        bool graph = info.HasInfo;
        w.Write($"# {dir}: tracer {info.Tracer}, pid {info.Pid}, {info.Threads.Count} threads, {info.TotalEvents} events, {info.TotalLost} lost, {info.Sites.Count} sites\n");
        var line = new StringBuilder(160);
        return TraceData.ReadChunks(dir, info, (tid, chunk) =>
        {
            if (tids is not null && !tids.Contains(tid))
            {
                return;
            }
            w.Write($"# chunk of {chunk.Count} events of thread {tid}\n");
            foreach (ref readonly RawEvent e in CollectionsMarshal.AsSpan(chunk))
            {
                line.Clear();
                long ns = time.Ns(e.Tsc);
                line.Append((ns / 1_000_000_000).ToString(CultureInfo.InvariantCulture)).Append('.')
                    .Append((ns % 1_000_000_000).ToString("D9", CultureInfo.InvariantCulture))
                    .Append(tid.ToString(CultureInfo.InvariantCulture).PadLeft(8)).Append(": ");
                string kind = !graph ? "[call ]" : e.Kind switch
                {
                    RawEvent.Entry => "[entry]",
                    RawEvent.Exit => "[exit ]",
                    RawEvent.Unwound => "[unwnd]",
                    _ => $"[kind{e.Kind}]",
                };
                if (e.LostBefore > 0)
                {
                    line.Append("[lost ").Append(e.LostBefore.ToString(CultureInfo.InvariantCulture)).Append(" before] ");
                }
                line.Append(kind).Append(' ').Append(names.Function(e.Site))
                    .Append("(0x").Append((names[e.Site]?.Address ?? 0).ToString("x", CultureInfo.InvariantCulture)).Append(')');
                if (graph)
                {
                    line.Append(" depth: ").Append(e.Depth.ToString(CultureInfo.InvariantCulture));
                    if (e.Slot != 0)
                    {
                        line.Append(" slot: 0x").Append(e.Slot.ToString("x", CultureInfo.InvariantCulture));
                    }
                }
                if (!graph || e.Kind == RawEvent.Entry)
                {
                    line.Append(" caller: ").Append(callers.FunctionAt(e.Caller));
                }
                else if (info.Retval && e.Kind == RawEvent.Exit)
                {
                    line.Append(" retval: 0x").Append(e.Value.ToString("x", CultureInfo.InvariantCulture));
                }
                if (e.Args.Length > 0 && (!graph || e.Kind == RawEvent.Entry))
                {
                    line.Append(" args: ").AppendJoin(", ", e.Args.Select(FunctionTraceWriter.Arg));
                }
                w.Write(line.Append('\n'));
            }
        });
    }
}
