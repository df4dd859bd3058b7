using System.CommandLine;
using Hotwire.Output;
using Hotwire.Tracing;

namespace Hotwire.Cli.Commands;

/// <summary><c>hotwire replay</c>: the recorded calls in ftrace's function-tracer format (or JSON).</summary>
public static class ReplayCommand
{
    public static Command Create()
    {
        var dir = new Option<string>("--data", "-d") { Description = "Data directory", DefaultValueFactory = _ => "hotwire.data" };
        var format = new Option<string>("--format") { Description = "text (ftrace's trace format) or json", DefaultValueFactory = _ => "text" };
        var tids = new Option<string?>("--tid") { Description = "Only these threads (comma-separated tids)" };
        var command = new Command("replay", "Print a recording: every call, in time order") { dir, format, tids };
        command.SetAction(r => (int)Run(r.GetValue(dir)!, r.GetValue(format)!, r.GetValue(tids)));
        return command;
    }

    private static ExitCode Run(string dir, string format, string? tidList)
    {
        if (format is not ("text" or "json"))
        {
            throw new UsageException($"--format takes text or json, not '{format}'");
        }
        IReadOnlySet<int>? tids = RecordCommand.ParseTids(tidList);
        (TraceReader reader, Dictionary<int, List<RawEvent>> events) = TraceReader.Open(dir);
        if (reader.TruncatedAt is long cut)
        {
            Console.Error.WriteLine($"hotwire: warning: {dir}/events.bin is cut short at byte {cut} (disk full, or Hotwire was killed): showing the complete events before it");
        }
        using Stream stdout = Console.OpenStandardOutput();
        if (format == "json")
        {
            FunctionTraceWriter.WriteJson(stdout, reader.Info, reader.Lines(events, tids));
            return ExitCode.Success;
        }
        using var w = new StreamWriter(stdout, bufferSize: 1 << 16);
        long shown = events.Where(kv => tids is null || tids.Contains(kv.Key)).Sum(kv => (long)kv.Value.Count);
        FunctionTraceWriter.WriteHeader(w, reader.Info, shown);
        foreach (TraceLine line in reader.Lines(events, tids))
        {
            w.Write(FunctionTraceWriter.Format(line));
            w.Write('\n');
        }
        return ExitCode.Success;
    }
}
