using System.CommandLine;
using System.Text;
using Hotwire.Output;
using Hotwire.Tracing;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire dump</c>: a recording in other tools' formats: Chrome trace-event JSON (Perfetto,
/// chrome://tracing), folded stacks (flamegraph.pl, speedscope), an interactive SVG flame graph;
/// without one of those, every stored event as uftrace dump shows them.
/// </summary>
public static class DumpCommand
{
    public static Command Create()
    {
        var reader = new ReaderOptions();
        var chrome = new Option<bool>("--chrome") { Description = "Chrome trace-event JSON: one complete event per call (open it in Perfetto or chrome://tracing)" };
        var flame = new Option<bool>("--flame-graph") { Description = "Folded stacks (main;foo;bar SELF_NS), for flamegraph.pl, inferno or speedscope" };
        var svg = new Option<string?>("--svg") { Description = "Write an interactive flame graph to this SVG file", HelpName = "FILE" };
        var output = new Option<string?>("--output", "-o") { Description = "Write to this file instead of stdout", HelpName = "FILE" };
        var command = new Command("dump", "Export a recording: --chrome, --flame-graph, --svg FILE; the raw events without them");
        reader.AddTo(command);
        command.Options.Add(chrome);
        command.Options.Add(flame);
        command.Options.Add(svg);
        command.Options.Add(output);
        command.SetAction(r => (int)Run(reader, r, r.GetValue(chrome), r.GetValue(flame), r.GetValue(svg), r.GetValue(output)));
        return command;
    }

    private static ExitCode Run(ReaderOptions options, ParseResult result, bool chrome, bool flame, string? svg, string? output)
    {
        if (svg is not null)
        {
            flame = false; // --flame-graph --svg FILE: the flame graph as SVG
        }
        if ((chrome ? 1 : 0) + (flame ? 1 : 0) + (svg is not null ? 1 : 0) > 1)
        {
            throw new UsageException("give one of --chrome, --flame-graph and --svg FILE");
        }
        if (svg is not null && output is not null)
        {
            throw new UsageException("--svg names its own output file: leave out -o");
        }
        (string dir, TraceInfo info, IReadOnlySet<int>? tids) = options.Open(result);
        string program = Path.GetFileName(info.Command.Split(' ', 2)[0]);
        ReaderOptions.RequireEvents(dir, info);
        if (!chrome && !flame && svg is null)
        {
            if (info.Tracer == Tracers.Profile)
            {
                throw new HotwireException($"{dir} was recorded with the profile tracer, which writes no events to dump: see its figures with hotwire report -d {dir}");
            }
            using var raw = new StreamWriter(ReaderOptions.OpenOutput(output), new UTF8Encoding(false), 1 << 16);
            ReaderOptions.WarnTruncated(dir, RawDumpWriter.Write(raw, dir, info, tids));
            return ExitCode.Success;
        }

        CallGraph.RequireGraph(dir, info, chrome ? "hotwire dump --chrome" : "a flame graph");
        if (chrome)
        {
            using Stream stream = ReaderOptions.OpenOutput(output);
            var writer = new ChromeTraceWriter(info, tids, stream);
            writer.WriteStart();
            CallGraph graph = CallGraph.Read(dir, info, tids, writer);
            ReaderOptions.RequireCalls(dir, graph.Calls, tids);
            writer.WriteEnd(graph);
            Finish(dir, info, tids, graph);
            return ExitCode.Success;
        }

        var read = new CallTree();
        CallGraph built = CallGraph.Read(dir, info, tids, read);
        ReaderOptions.RequireCalls(dir, built.Calls, tids);
        CallTree tree = read.WithoutEmptyPaths();
        var names = new SiteNames(info);
        var time = new TraceTime(info.Clock);
        using var w = new StreamWriter(ReaderOptions.OpenOutput(svg ?? output), new UTF8Encoding(false), 1 << 16);
        if (flame)
        {
            FlameGraph.WriteFolded(w, tree, names, time);
        }
        else
        {
            string threads = tids is null ? $"{built.Threads.Count} threads" : $"thread {string.Join(", ", tids)}";
            FlameGraph.WriteSvg(w, tree, names, time, $"Flame Graph: {program} (pid {info.Pid}, {threads})");
        }
        w.Flush();
        Finish(dir, info, tids, built, callPaths: true);
        return ExitCode.Success;
    }

    private static void Finish(string dir, TraceInfo info, IReadOnlySet<int>? tids, CallGraph graph, bool callPaths = false)
    {
        ReaderOptions.WarnTruncated(dir, graph.TruncatedAt);
        ReaderOptions.WarnGaps(info, tids, graph, callPaths);
    }
}
