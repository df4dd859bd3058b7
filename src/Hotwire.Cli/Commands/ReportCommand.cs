using System.CommandLine;
using Hotwire.Output;
using Hotwire.Tracing;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire report</c>: uftrace report's flat profile (total, self, calls, avg, min, max per
/// function) of a function_graph or profile recording.
/// </summary>
public static class ReportCommand
{
    public static Command Create()
    {
        var reader = new ReaderOptions();
        var sort = new Option<string>("--sort", "-s") { Description = "Sort by these keys, in order (comma-separated): total, self, call, avg, min, max, func", DefaultValueFactory = _ => "total" };
        var format = new Option<string>("--format") { Description = "text (uftrace report's table) or csv (times in ns)", DefaultValueFactory = _ => "text" };
        var command = new Command("report", "Per-function times of a recording: total, self, calls, average, minimum, maximum");
        reader.AddTo(command);
        command.Options.Add(sort);
        command.Options.Add(format);
        command.SetAction(r => (int)Run(reader, r, r.GetValue(sort)!, r.GetValue(format)!));
        return command;
    }

    private static ExitCode Run(ReaderOptions options, ParseResult result, string sortList, string format)
    {
        if (format is not ("text" or "csv"))
        {
            throw new UsageException($"--format takes text or csv, not '{format}'");
        }
        string[] keys = ReportWriter.TryParseSortKeys(sortList, out string? error) ?? throw new UsageException($"--sort: {error}");
        (string dir, TraceInfo info, IReadOnlySet<int>? tids) = options.Open(result);
        List<ReportRow> rows;
        CallGraph? built = null;
        switch (info.Tracer)
        {
            case Tracers.Profile:
                rows = ReportBuilder.FromProfile(info, tids);
                ReaderOptions.RequireCalls(dir, rows.Sum(r => r.Calls), tids);
                break;
            case Tracers.FunctionGraph:
                ReaderOptions.RequireEvents(dir, info);
                var builder = new ReportBuilder(info);
                CallGraph graph = built = CallGraph.Read(dir, info, tids, builder);
                ReaderOptions.WarnTruncated(dir, graph.TruncatedAt);
                ReaderOptions.RequireCalls(dir, graph.Calls, tids);
                rows = builder.Rows();
                break;
            case Tracers.Function:
                throw new HotwireException($"{dir} was recorded with the function tracer, which records calls but not their durations: record with --tracer function_graph or --tracer profile for a report (hotwire count counts calls)");
            default:
                CallGraph.RequireGraph(dir, info, "hotwire report");
                return ExitCode.Failure;
        }
        rows = ReportWriter.Sort(rows, keys);
        using var w = new StreamWriter(ReaderOptions.StandardOutput(), bufferSize: 1 << 16);
        if (format == "csv")
        {
            ReportWriter.WriteCsv(w, rows);
        }
        else
        {
            ReportWriter.WriteText(w, rows);
        }
        w.Flush();
        ReaderOptions.WarnGaps(info, tids, built);
        return ExitCode.Success;
    }
}
