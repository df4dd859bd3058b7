using System.CommandLine;
using Hotwire.Cli.Metrics;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire metrics</c>: the profiler on a process, exported to Prometheus and/or an
/// OpenTelemetry collector until stopped (SIGTERM, Ctrl-C, --duration, or the target's end) —
/// the headless form a fleet's config management starts per host.
/// </summary>
public static class MetricsCommand
{
    public static Command Create()
    {
        var target = new TargetOptions();
        var metrics = new MetricsOptions();
        var depth = new Option<int?>("--depth", "-D") { Description = "Follow calls only this many traced frames deep" };
        var duration = OptionValues.Seconds("--duration", "Stop after this long (default: until SIGTERM, Ctrl-C or the program's end)", "-d");
        var command = new Command("metrics", "Export per-function calls and latency histograms of a process to Prometheus (--prometheus) or an OpenTelemetry collector (--otlp) until stopped");
        target.AddTo(command);
        metrics.AddTo(command);
        command.Options.Add(depth);
        command.Options.Add(duration);
        command.SetAction(r => (int)Run(target, metrics, r, r.GetValue(depth), r.GetValue(duration)));
        return command;
    }

    private static ExitCode Run(TargetOptions target, MetricsOptions metricsOptions, ParseResult result, int? depth, TimeSpan? duration)
    {
        using StopSignals stop = StopSignals.Claim();
        MetricsTargets metrics = metricsOptions.Parse(result);
        if (!metrics.Any)
        {
            throw new UsageException("say where the metrics go: --prometheus [ADDR:]PORT, --otlp URL, or both (hotwire top shows them on the terminal)");
        }
        ProfileWatch watch = ProfileWatch.Open(target, result, stop, depth, metrics);
        try
        {
            Console.Error.WriteLine($"hotwire: profiling {watch.Sites.Count} functions in pid {watch.Pid} ({watch.ProcessName}); {metrics.Describe()}; SIGTERM or Ctrl-C to stop");
            if (duration is TimeSpan limit)
            {
                stop.CancelAfter(limit);
            }
            while (!stop.IsCancellationRequested && watch.Wait(TimeSpan.FromSeconds(1), stop.Token))
            {
                watch.Sample();
            }
        }
        catch
        {
            watch.Abandon();
            throw;
        }
        (_, string ending, bool flushed) = watch.Finish();
        ulong calls = watch.Monitor.Functions.Aggregate(0UL, (n, f) => n + f.Calls);
        int called = watch.Monitor.Functions.Count(f => f.Calls > 0);
        Console.Error.WriteLine($"hotwire: {calls} calls of {called} functions exported; {ending}");
        if (!flushed)
        {
            Console.Error.WriteLine($"hotwire: the last metrics could not be pushed to {metrics.Otlp} (is the collector running?)");
            return ExitCode.Failure;
        }
        return ExitCode.Success;
    }
}
