using System.CommandLine;
using System.Globalization;
using System.Text;
using Hotwire.Cli.Metrics;
using Hotwire.Tracing;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire top</c>: the profiler on a live process, its hottest functions and its threads
/// refreshed every second — full screen on a terminal (q or Ctrl-C detaches; keys sort), plain
/// text blocks otherwise. Can export the same figures as metrics meanwhile.
/// </summary>
public static class TopCommand
{
    private static readonly string[] s_sortKeys = ["calls", "total", "self", "avg", "max"];

    public static Command Create()
    {
        var target = new TargetOptions();
        var metrics = new MetricsOptions();
        var depth = new Option<int?>("--depth", "-D") { Description = "Follow calls only this many traced frames deep" };
        var duration = OptionValues.Seconds("--duration", "Stop after this long (default: until q, Ctrl-C or the program's end)", "-d");
        var sort = new Option<string>("--sort", "-s") { Description = "calls, total, self, avg or max (per second where it applies; keys c t s a m switch)", DefaultValueFactory = _ => "total" };
        var lines = new Option<int>("--lines", "-n") { Description = "Functions shown (default: as many as fit on the terminal, 20 when not on one)", DefaultValueFactory = _ => 0 };
        var command = new Command("top", "Show the functions of a running process that take the most time, refreshed every second (q or Ctrl-C detaches)");
        target.AddTo(command);
        metrics.AddTo(command);
        command.Options.Add(depth);
        command.Options.Add(duration);
        command.Options.Add(sort);
        command.Options.Add(lines);
        command.SetAction(r => (int)Run(target, metrics, r, r.GetValue(depth), r.GetValue(duration), r.GetValue(sort)!, r.GetValue(lines)));
        return command;
    }

    private static ExitCode Run(TargetOptions target, MetricsOptions metricsOptions, ParseResult result, int? depth, TimeSpan? duration, string sort, int lines)
    {
        using StopSignals stop = StopSignals.Claim();
        if (!s_sortKeys.Contains(sort))
        {
            throw new UsageException($"--sort takes calls, total, self, avg or max, not '{sort}'");
        }
        if (lines < 0)
        {
            throw new UsageException($"--lines takes a number of functions, not {lines}");
        }
        MetricsTargets metrics = metricsOptions.Parse(result);
        ProfileWatch watch = ProfileWatch.Open(target, result, stop, depth, metrics);
        var view = new TopView(watch, sort);
        try
        {
            if (metrics.Any)
            {
                Console.Error.WriteLine($"hotwire: {metrics.Describe()}");
            }
            if (duration is TimeSpan limit)
            {
                stop.CancelAfter(limit);
            }
            bool terminal = !Console.IsOutputRedirected && !Console.IsInputRedirected && AnsiConsole.Profile.Capabilities.Ansi;
            if (terminal)
            {
                RunFullScreen(watch, view, stop, lines);
            }
            else
            {
                RunPlain(watch, view, stop, lines == 0 ? 20 : lines);
            }
        }
        catch
        {
            watch.Abandon();
            throw;
        }
        (ProfileSample last, string ending, bool flushed) = watch.Finish();
        view.Take(last);
        Console.Error.WriteLine($"hotwire: {view.TotalCalls} calls of {watch.Monitor.Functions.Count(f => f.Calls > 0)} of {watch.Sites.Count} functions seen; {ending}");
        if (!flushed)
        {
            Console.Error.WriteLine($"hotwire: the last metrics could not be pushed to {metrics.Otlp} (is the collector running?)");
            return ExitCode.Failure;
        }
        return ExitCode.Success;
    }

    private static void RunPlain(ProfileWatch watch, TopView view, StopSignals stop, int lines)
    {
        Console.Error.WriteLine($"hotwire: profiling {watch.Sites.Count} functions in pid {watch.Pid} ({watch.ProcessName}); Ctrl-C to stop");
        while (!stop.IsCancellationRequested && watch.Wait(TimeSpan.FromSeconds(1), stop.Token))
        {
            if (stop.IsCancellationRequested)
            {
                break;
            }
            view.Take(watch.Sample());
            Console.Out.Write(view.PlainText(lines));
            Console.Out.Flush();
        }
    }

    private static void RunFullScreen(ProfileWatch watch, TopView view, StopSignals stop, int lines)
    {
        void Show()
        {
            AnsiConsole.Live(view.Render(lines)).AutoClear(false).Overflow(VerticalOverflow.Crop).Start(ctx =>
            {
                long next = Environment.TickCount64 + 1000;
                bool running = true;
                while (running && !stop.IsCancellationRequested)
                {
                    while (Console.KeyAvailable)
                    {
                        ConsoleKeyInfo key = Console.ReadKey(intercept: true);
                        if (key.KeyChar is 'q' or 'Q' || key.Key == ConsoleKey.Escape)
                        {
                            return;
                        }
                        if (view.SortBy(key.KeyChar))
                        {
                            ctx.UpdateTarget(view.Render(lines));
                        }
                    }
                    long wait = Math.Clamp(next - Environment.TickCount64, 0, 50);
                    running = watch.Wait(TimeSpan.FromMilliseconds(wait), stop.Token);
                    if (Environment.TickCount64 >= next && running && !stop.IsCancellationRequested)
                    {
                        next += 1000;
                        view.Take(watch.Sample());
                        ctx.UpdateTarget(view.Render(lines));
                    }
                }
            });
        }
        if (AnsiConsole.Profile.Capabilities.AlternateBuffer)
        {
            AnsiConsole.AlternateScreen(Show);
        }
        else
        {
            Show();
        }
    }

    /// <summary>The figures of the last interval and since the start, sorted, as a table.</summary>
    private sealed class TopView(ProfileWatch watch, string sort)
    {
        private string _sort = sort;
        private ProfileSample _last = new(1, [], []);
        private int _samples;

        public ulong TotalCalls => watch.Monitor.Functions.Aggregate(0UL, (n, f) => n + f.Calls);

        public void Take(ProfileSample sample)
        {
            _last = sample;
            _samples++;
        }

        public bool SortBy(char key)
        {
            string? by = key switch { 'c' => "calls", 't' => "total", 's' => "self", 'a' => "avg", 'm' => "max", _ => null };
            if (by is null)
            {
                return false;
            }
            _sort = by;
            return true;
        }

        private sealed record Row(FunctionTotals Function, double CallsPerSecond, double TotalPerSecond, double SelfPerSecond, double AverageNs, double MaxNs);

        private List<Row> Rows()
        {
            double seconds = Math.Max(_last.Seconds, 1e-3);
            double nsPerTick = 1e9 / watch.Monitor.TicksPerSecond;
            var recent = _last.Functions.ToDictionary(d => d.Function);
            var rows = new List<Row>();
            foreach (FunctionTotals f in watch.Monitor.Functions)
            {
                if (f.Calls == 0)
                {
                    continue;
                }
                recent.TryGetValue(f, out FunctionDelta? d);
                ulong calls = d?.Calls ?? 0;
                double average = calls > 0 ? d!.TotalTicks * nsPerTick / calls : f.TotalTicks * nsPerTick / f.Calls;
                rows.Add(new Row(f, calls / seconds, (d?.TotalTicks ?? 0) * nsPerTick / seconds, (d?.SelfTicks ?? 0) * nsPerTick / seconds, average, f.MaxTicks * nsPerTick));
            }
            Func<Row, double> key = _sort switch
            {
                "calls" => r => r.CallsPerSecond,
                "self" => r => r.SelfPerSecond,
                "avg" => r => r.AverageNs,
                "max" => r => r.MaxNs,
                _ => r => r.TotalPerSecond,
            };
            return [.. rows.OrderByDescending(key).ThenByDescending(r => r.Function.Calls).ThenBy(r => r.Function.Site.Function, StringComparer.Ordinal)];
        }

        private List<(int Tid, string Name, double CallsPerSecond, double Busy)> Threads()
        {
            double seconds = Math.Max(_last.Seconds, 1e-3);
            var byTid = _last.Threads.ToDictionary(t => t.Tid);
            return [.. watch.ThreadNames().Select(t =>
                {
                    byTid.TryGetValue(t.Key, out ThreadDelta? d);
                    return (t.Key, t.Value, (d?.Calls ?? 0) / seconds, (d?.SelfTicks ?? 0) / watch.Monitor.TicksPerSecond / seconds);
                })
                .OrderByDescending(t => t.Item4).ThenByDescending(t => t.Item3).ThenBy(t => t.Key)];
        }

        private string Header() => $"hotwire top — pid {watch.Pid} ({watch.ProcessName}), {watch.Sites.Count} functions traced, sorted by {SortLabel}";

        private string SortLabel => _sort switch { "calls" => "calls/s", "total" => "total time/s", "self" => "self time/s", "avg" => "average", _ => "max" };

        public IRenderable Render(int lines)
        {
            List<Row> rows = Rows();
            var threads = Threads();
            int shownThreads = Math.Min(threads.Count, 8);
            int fit = Math.Max(3, Console.WindowHeight - 9 - shownThreads);
            int shown = Math.Min(rows.Count, lines > 0 ? lines : fit);
            var table = new Table().Border(TableBorder.Simple).Expand();
            foreach (string column in new[] { "CALLS/S", "TOTAL/S", "SELF/S", "AVG", "MAX" })
            {
                table.AddColumn(new TableColumn(column).RightAligned().NoWrap());
            }
            table.AddColumn(new TableColumn("FUNCTION").NoWrap());
            table.AddColumn(new TableColumn("MODULE").NoWrap());
            foreach (Row r in rows.Take(shown))
            {
                table.AddRow(Rate(r.CallsPerSecond), Time(r.TotalPerSecond), Time(r.SelfPerSecond), Time(r.AverageNs), Time(r.MaxNs),
                    Markup.Escape(r.Function.Site.Function), Markup.Escape(r.Function.Site.Site.ModuleName));
            }
            var threadTable = new Table().Border(TableBorder.Simple);
            threadTable.AddColumn(new TableColumn("TID").RightAligned());
            threadTable.AddColumn("THREAD");
            threadTable.AddColumn(new TableColumn("CALLS/S").RightAligned());
            threadTable.AddColumn(new TableColumn("IN TRACED").RightAligned());
            foreach (var t in threads.Take(shownThreads))
            {
                threadTable.AddRow(t.Tid.ToString(CultureInfo.InvariantCulture), Markup.Escape(t.Name), Rate(t.CallsPerSecond), $"{t.Busy * 100:0.0}%");
            }
            string waiting = _samples == 0 ? " (first figures in a second)" : "";
            return new Rows(
                new Markup($"[bold]{Markup.Escape(Header())}[/]{waiting}"),
                new Markup("[dim]keys: c calls/s, t total/s, s self/s, a average, m max; q detaches[/]"),
                table,
                new Markup($"[bold]threads[/] ({threads.Count}; time in traced functions, self)"),
                threadTable);
        }

        public string PlainText(int lines)
        {
            List<Row> rows = Rows();
            var text = new StringBuilder();
            text.Append("# ").Append(Header()).Append(" at ").Append(DateTime.Now.ToString("HH:mm:ss", CultureInfo.InvariantCulture)).Append('\n');
            text.Append("#  CALLS/S    TOTAL/S     SELF/S        AVG        MAX  FUNCTION [MODULE]\n");
            foreach (Row r in rows.Take(lines))
            {
                text.Append(Rate(r.CallsPerSecond).PadLeft(10)).Append(Time(r.TotalPerSecond).PadLeft(11)).Append(Time(r.SelfPerSecond).PadLeft(11))
                    .Append(Time(r.AverageNs).PadLeft(11)).Append(Time(r.MaxNs).PadLeft(11)).Append("  ")
                    .Append(r.Function.Site.Function).Append(" [").Append(r.Function.Site.Site.ModuleName).Append("]\n");
            }
            text.Append("# threads:");
            foreach (var t in Threads())
            {
                text.Append(CultureInfo.InvariantCulture, $" {t.Name}-{t.Tid} {Rate(t.CallsPerSecond)} calls/s {t.Busy * 100:0.0}%;");
            }
            text.Append("\n\n");
            return text.ToString();
        }

        private static string Rate(double perSecond) => perSecond switch
        {
            >= 1e7 => (perSecond / 1e6).ToString("0", CultureInfo.InvariantCulture) + "M",
            >= 1e4 => (perSecond / 1e3).ToString("0", CultureInfo.InvariantCulture) + "k",
            _ => perSecond.ToString("0", CultureInfo.InvariantCulture),
        };

        /// <summary>A duration in ns, in the unit that keeps three or four figures.</summary>
        public static string Time(double ns) => ns switch
        {
            0 => "0",
            < 1e3 => ns.ToString("0", CultureInfo.InvariantCulture) + "ns",
            < 1e6 => (ns / 1e3).ToString("0.00", CultureInfo.InvariantCulture) + "us",
            < 1e9 => (ns / 1e6).ToString("0.00", CultureInfo.InvariantCulture) + "ms",
            _ => (ns / 1e9).ToString("0.00", CultureInfo.InvariantCulture) + "s",
        };
    }
}
