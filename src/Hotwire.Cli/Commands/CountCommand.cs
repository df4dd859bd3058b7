using System.CommandLine;
using System.Diagnostics;
using System.Text;
using Hotwire.Patching;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire count</c>: how often each chosen function is called, counted in the target itself
/// (per-thread counters, nothing streamed), like ftrace's function profiler hit counts.
/// </summary>
public static class CountCommand
{
    public static Command Create()
    {
        var target = new TargetOptions();
        var duration = OptionValues.Seconds("--duration", "Stop after this long (default: until Ctrl-C or the program exits)", "-d");
        var top = new Option<int>("--top") { Description = "Show the N most called functions (0: all)", DefaultValueFactory = _ => 20 };
        var command = new Command("count", "Count calls of functions in a running process (or a program it starts) until Ctrl-C");
        target.AddTo(command);
        command.Options.Add(duration);
        command.Options.Add(top);
        command.SetAction(result => (int)Run(target, result, result.GetValue(duration), result.GetValue(top)));
        return command;
    }

    private static ExitCode Run(TargetOptions target, ParseResult result, TimeSpan? duration, int top)
    {
        using StopSignals stop = StopSignals.Claim();
        if (top < 0)
        {
            throw new UsageException($"--top takes a number of functions, or 0 for all, not {top}");
        }

        var counting = new CountingOps(target.Filters(result), target.Notraces(result));
        IReadOnlyList<SiteRecord> sites = [];
        // Registered before the program runs (launch: from its first instruction), or right after attach.
        Session session = target.Open(result, counting, stop, beforeRun: s => sites = s.Register(counting));
        int? exitStatus = null;
        var clock = Stopwatch.StartNew();
        try
        {
            Console.Error.WriteLine($"hotwire: counting calls of {sites.Count} functions in pid {session.Pid}; Ctrl-C to stop");
            if (duration is TimeSpan limit)
            {
                stop.CancelAfter(limit);
            }
            while (!stop.IsCancellationRequested)
            {
                if (session.Launched && session.WaitForExit(stop.Token, TimeSpan.FromMilliseconds(50)) is int status)
                {
                    exitStatus = status;
                    break;
                }
                if (!session.Launched && (!Directory.Exists($"/proc/{session.Pid}/task") || session.Execed()))
                {
                    break;
                }
                stop.Token.WaitHandle.WaitOne(50);
            }
        }
        catch
        {
            session.Dispose();
            throw;
        }
        // Counts live in memory Hotwire maps too: read them, then restore the target's code and detach.
        bool targetGone = !session.Launched && !session.IsAlive();
        bool execed = session.Execed();
        var rows = sites.Select(s => (Site: s, Count: counting.Count(s))).Where(r => r.Count > 0)
            .OrderByDescending(r => r.Count).ThenBy(r => r.Site.Function, StringComparer.Ordinal).ToList();
        session.Dispose();
        clock.Stop();

        var text = new StringBuilder();
        text.Append("# calls      function\n");
        foreach (var (site, count) in top > 0 ? rows.Take(top) : rows)
        {
            text.Append(count.ToString().PadLeft(12)).Append("  ").Append(site.Function).Append(" [").Append(site.Site.ModuleName).Append("]\n");
        }
        Console.Out.Write(text.ToString());
        Console.Error.WriteLine($"hotwire: {rows.Count} of {sites.Count} functions were called in {clock.Elapsed.TotalSeconds:F1} s"
            + (exitStatus is int e ? $"; the program exited with status {e}"
                : targetGone ? $"; pid {session.Pid} exited while being counted"
                : execed ? $"; pid {session.Pid} executed a new program, which ended the count (Hotwire does not follow exec yet: attach to it again)"
                : session.Launched ? $"; pid {session.Pid} runs on with its original code"
                : $"; pid {session.Pid} runs on with its original code"));
        return ExitCode.Success;
    }
}
