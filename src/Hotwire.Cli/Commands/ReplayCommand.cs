using System.CommandLine;
using Hotwire.Output;
using Hotwire.Tracing;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire replay</c>: the recorded calls in time order: ftrace's function-tracer format, or for
/// a function_graph recording ftrace's function_graph format (or uftrace's replay layout); JSON for both.
/// </summary>
public static class ReplayCommand
{
    public static Command Create()
    {
        var reader = new ReaderOptions();
        var format = new Option<string>("--format") { Description = "text (ftrace's trace format), uftrace (uftrace replay's layout, function_graph recordings) or json", DefaultValueFactory = _ => "text" };
        var command = new Command("replay", "Print a recording: every call, in time order");
        reader.AddTo(command);
        command.Options.Add(format);
        command.SetAction(r => (int)Run(reader, r, r.GetValue(format)!));
        return command;
    }

    private static ExitCode Run(ReaderOptions options, ParseResult result, string format)
    {
        if (format is not ("text" or "uftrace" or "json"))
        {
            throw new UsageException($"--format takes text, uftrace or json, not '{format}'");
        }
        (string dir, TraceInfo info, IReadOnlySet<int>? tids) = options.Open(result);
        switch (info.Tracer)
        {
            case Tracers.Profile:
                throw new HotwireException($"{dir} was recorded with the profile tracer, which keeps per-function totals but no events to replay: see them with hotwire report -d {dir}, or record with --tracer function_graph to replay calls");
            case Tracers.Function when format == "uftrace":
                throw new HotwireException($"{dir} was recorded with the function tracer, which records no exits or durations for uftrace's layout: use --format text, or record with --tracer function_graph");
        }
        ReaderOptions.WarnNoEvents(dir, info);
        if (info.Tracer == Tracers.FunctionGraph)
        {
            return ReplayGraph(dir, info, tids, format);
        }
        // Streaming: the chunk index first (headers only), then each thread's chunks as the merge needs them.
        var reader = new TraceReader(info);
        List<TraceData.ChunkRef> chunks = TraceData.IndexChunks(dir, info, out long? truncatedAt);
        ReaderOptions.WarnTruncated(dir, truncatedAt);
        using Stream stdout = ReaderOptions.StandardOutput();
        if (format == "json")
        {
            FunctionTraceWriter.WriteJson(stdout, reader.Info, reader.Stream(dir, chunks, tids));
            return ExitCode.Success;
        }
        using var w = new StreamWriter(stdout, bufferSize: 1 << 16);
        long shown = chunks.Where(c => tids is null || tids.Contains(c.Tid)).Sum(c => (long)c.Count);
        FunctionTraceWriter.WriteHeader(w, reader.Info, shown);
        foreach (TraceLine line in reader.Stream(dir, chunks, tids))
        {
            w.Write(FunctionTraceWriter.Format(line));
            w.Write('\n');
        }
        return ExitCode.Success;
    }

    private static ExitCode ReplayGraph(string dir, TraceInfo info, IReadOnlySet<int>? tids, string format)
    {
        using Stream stdout = ReaderOptions.StandardOutput();
        GraphReplayFormat layout = format switch
        {
            "json" => GraphReplayFormat.Json,
            "uftrace" => GraphReplayFormat.Uftrace,
            _ => GraphReplayFormat.Ftrace,
        };
        using var text = new StreamWriter(stdout, bufferSize: 1 << 16);
        var writer = new GraphReplayWriter(info, tids, layout, text, stdout);
        writer.WriteHeader();
        CallGraph graph = CallGraph.Read(dir, info, tids, writer);
        writer.WriteFooter(graph);
        text.Flush();
        ReaderOptions.WarnTruncated(dir, graph.TruncatedAt);
        return ExitCode.Success;
    }
}
