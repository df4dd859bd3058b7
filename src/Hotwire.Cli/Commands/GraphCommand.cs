using System.CommandLine;
using Hotwire.Output;
using Hotwire.Tracing;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire graph [FUNC]</c>: uftrace graph's call tree aggregated by call path, threads merged;
/// with FUNC, the tree under every call of FUNC and the distinct paths that led to it.
/// </summary>
public static class GraphCommand
{
    public static Command Create()
    {
        var reader = new ReaderOptions();
        var function = new Argument<string?>("FUNC") { Description = "Show the calls under this function (a name, or a glob) and the paths that called it", Arity = ArgumentArity.ZeroOrOne };
        var command = new Command("graph", "The call tree of a function_graph recording, aggregated by call path: total time and calls of each");
        reader.AddTo(command);
        command.Arguments.Add(function);
        command.SetAction(r => (int)Run(reader, r, r.GetValue(function)));
        return command;
    }

    private static ExitCode Run(ReaderOptions options, ParseResult result, string? function)
    {
        (string dir, TraceInfo info, IReadOnlySet<int>? tids) = options.Open(result);
        CallGraph.RequireGraph(dir, info, "hotwire graph");
        ReaderOptions.RequireEvents(dir, info);
        var built = new CallTree();
        CallGraph graph = CallGraph.Read(dir, info, tids, built);
        ReaderOptions.WarnTruncated(dir, graph.TruncatedAt);
        ReaderOptions.RequireCalls(dir, graph.Calls, tids);
        CallTree tree = built.WithoutEmptyPaths();

        var names = new SiteNames(info);
        string about = tids is null
            ? $"pid {info.Pid}, {graph.Threads.Count} thread{(graph.Threads.Count == 1 ? "" : "s")}"
            : $"pid {info.Pid}, thread {string.Join(", ", tids)}";
        List<Backtrace>? backtraces = null;
        string rootName = Path.GetFileName(info.Command.Split(' ', 2)[0]) is { Length: > 0 } program ? program : $"pid {info.Pid}";
        if (function is not null)
        {
            CallTree full = tree;
            tree = full.Focus(names.Matching(function), out backtraces);
            if (tree.Calls(CallTree.Root) == 0)
            {
                IEnumerable<string> called = Enumerable.Range(1, full.Count - 1).Select(n => names.Function(full.Site(n)));
                throw new HotwireException(NeverCalled(function, dir, called));
            }
            rootName = function;
        }
        using var w = new StreamWriter(ReaderOptions.StandardOutput(), bufferSize: 1 << 16);
        CallGraphWriter.Write(w, tree, rootName, names, new TraceTime(info.Clock), backtraces, about);
        ReaderOptions.WarnGaps(info, tids, graph, callPaths: true);
        return ExitCode.Success;
    }

    private static string NeverCalled(string function, string dir, IEnumerable<string> called)
    {
        List<string> near = NearNames(function, called);
        string hint = near.Count > 0 ? $" (near names: {string.Join(", ", near)})" : "";
        return $"'{function}' was never called in {dir}{hint}: hotwire report -d {dir} lists the functions that were";
    }

    internal static List<string> NearNames(string probe, IEnumerable<string> names) => Patching.FunctionFilter.NearNames(probe, names);
}
