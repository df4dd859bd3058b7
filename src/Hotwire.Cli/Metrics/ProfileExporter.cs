using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using Hotwire.Tracing;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace Hotwire.Cli.Metrics;

/// <summary>Where the profiler's figures go: a Prometheus scrape endpoint, an OTLP collector, or both.</summary>
public sealed record MetricsTargets(string? PrometheusHost, int? PrometheusPort, Uri? Otlp, OtlpExportProtocol OtlpProtocol, TimeSpan ExportInterval)
{
    public bool Any => PrometheusPort is not null || Otlp is not null;

    public string Describe()
    {
        var parts = new List<string>();
        if (PrometheusPort is int port)
        {
            parts.Add($"Prometheus scrapes http://{(PrometheusHost == "*" ? "HOST" : PrometheusHost)}:{port}/metrics");
        }
        if (Otlp is not null)
        {
            parts.Add($"OTLP ({(OtlpProtocol == OtlpExportProtocol.Grpc ? "gRPC" : "HTTP/protobuf")}) to {Otlp} every {ExportInterval.TotalSeconds:0.###} s");
        }
        return string.Join(", ", parts);
    }
}

/// <summary>
/// The profiler's per-function figures as OpenTelemetry metrics, through the OpenTelemetry .NET
/// SDK and its exporters: <c>hotwire.function.calls</c> (counter), <c>hotwire.function.duration</c>
/// (histogram, s) and <c>hotwire.function.self_time</c> (counter, s), labelled with process, pid,
/// module and function. The histogram's buckets are the target's own log2 buckets (every other
/// one): its counts are the target's, recorded as increments after each sample.
/// </summary>
public sealed class ProfileExporter : IDisposable
{
    public const string MeterName = "Hotwire.Profile";

    // The exported bucket bounds are 2^k ticks for even k from 6 (tens of ns) to 40 (minutes):
    // each exported bucket is a union of the target's buckets, so its count is exact.
    private const int FirstBound = 6, LastBound = 40, BoundStep = 2;

    private readonly Meter _meter = new(MeterName);
    private readonly MeterProvider _provider;
    private readonly Histogram<double> _duration;
    private readonly double _ticksPerSecond;
    private readonly Lock _gate = new();
    private readonly Dictionary<FunctionTotals, KeyValuePair<string, object?>[]> _labels = new(ReferenceEqualityComparer.Instance);
    private List<Measurement<long>> _calls = [];
    private List<Measurement<double>> _selfTime = [];
    private readonly bool _pushes;
    private string _process = "";
    private int _pid;

    private ProfileExporter(MetricsTargets targets, double ticksPerSecond)
    {
        _ticksPerSecond = ticksPerSecond;
        _pushes = targets.Otlp is not null;
        double[] bounds = [.. Enumerable.Range(0, (LastBound - FirstBound) / BoundStep + 1).Select(i => Math.ScaleB(1, FirstBound + i * BoundStep) / ticksPerSecond)];
        MeterProviderBuilder builder = Sdk.CreateMeterProviderBuilder()
            .ConfigureResource(r => r.AddService("hotwire", serviceInstanceId: Environment.MachineName + "/" + Environment.ProcessId)
                .AddAttributes([new("host.name", Environment.MachineName)]))
            .AddMeter(MeterName)
            // A process may have tens of thousands of traced functions: one series each.
            .AddView("hotwire.function.duration", new ExplicitBucketHistogramConfiguration { Boundaries = bounds, CardinalityLimit = CardinalityLimit })
            .AddView("hotwire.function.calls", new MetricStreamConfiguration { CardinalityLimit = CardinalityLimit })
            .AddView("hotwire.function.self_time", new MetricStreamConfiguration { CardinalityLimit = CardinalityLimit });
        if (targets.PrometheusPort is int port)
        {
            builder.AddPrometheusHttpListener(o =>
            {
                o.Host = targets.PrometheusHost ?? "*";
                o.Port = port;
                o.ScrapeResponseCacheDurationMilliseconds = 0;
            });
        }
        if (targets.Otlp is Uri otlp)
        {
            builder.AddOtlpExporter((o, reader) =>
            {
                o.Endpoint = otlp;
                o.Protocol = targets.OtlpProtocol;
                reader.PeriodicExportingMetricReaderOptions.ExportIntervalMilliseconds = (int)targets.ExportInterval.TotalMilliseconds;
                reader.TemporalityPreference = MetricReaderTemporalityPreference.Cumulative;
            });
        }
        _meter.CreateObservableCounter("hotwire.function.calls", ObserveCalls, "{call}", "Calls of the function that returned (profiler)");
        _meter.CreateObservableCounter("hotwire.function.self_time", ObserveSelfTime, "s", "Time spent in the function itself, not in traced functions it called");
        _duration = _meter.CreateHistogram<double>("hotwire.function.duration", "s", "Duration of the function's calls, callees included");
        _provider = builder.Build();
    }

    private const int CardinalityLimit = 1 << 20;

    /// <summary>Starts the exporters (the Prometheus endpoint listens at once); a port in use is one clear error.</summary>
    public static ProfileExporter Start(MetricsTargets targets, double ticksPerSecond)
    {
        try
        {
            return new ProfileExporter(targets, ticksPerSecond);
        }
        catch (InvalidOperationException e) when (e.InnerException is HttpListenerException listen)
        {
            throw new HotwireException($"--prometheus: cannot listen on {targets.PrometheusHost}:{targets.PrometheusPort}: {listen.Message}");
        }
    }

    /// <summary>The process whose functions are measured (labels process and pid), known once attached.</summary>
    public void SetProcess(string name, int pid) => (_process, _pid) = (name, pid);

    /// <summary>Takes a sample's changes: the histogram gets the new calls, the counters their new totals.</summary>
    public void Update(ProfileSample sample, IReadOnlyList<FunctionTotals> totals)
    {
        foreach (FunctionDelta delta in sample.Functions)
        {
            RecordDurations(delta, Labels(delta.Function));
        }
        var calls = new List<Measurement<long>>(totals.Count);
        var self = new List<Measurement<double>>(totals.Count);
        foreach (FunctionTotals f in totals)
        {
            if (f.Calls > 0)
            {
                calls.Add(new Measurement<long>((long)f.Calls, Labels(f)));
                self.Add(new Measurement<double>(f.SelfTicks / _ticksPerSecond, Labels(f)));
            }
        }
        lock (_gate)
        {
            (_calls, _selfTime) = (calls, self);
        }
    }

    /// <summary>Pushes what OTLP has not sent yet (at the end); false when the collector did not take it.</summary>
    public bool Flush() => !_pushes || _provider.ForceFlush(10_000);

    // The SDK's histogram takes one value per call: the calls of each target bucket are recorded
    // as values inside that bucket, spread so that their sum is the calls' total time.
    private void RecordDurations(FunctionDelta delta, KeyValuePair<string, object?>[] labels)
    {
        ReadOnlySpan<KeyValuePair<string, object?>> tags = labels;
        double[] value = new double[GraphTracer.HistogramBuckets];
        double minimum = 0;
        for (int k = 0; k < value.Length; k++)
        {
            value[k] = ProfileMonitor.BucketLowTicks(k) + 0.5;   // strictly inside: the SDK's bounds are inclusive above
            minimum += value[k] * delta.Buckets[k];
        }
        double rest = delta.TotalTicks - minimum;
        for (int k = value.Length - 1; k >= 0 && rest > 0; k--)
        {
            if (delta.Buckets[k] == 0 || k == value.Length - 1)
            {
                continue;
            }
            double room = (ProfileMonitor.BucketLowTicks(k + 1) - 1.0 - value[k]) * delta.Buckets[k];
            double take = Math.Min(rest, room);
            value[k] += take / delta.Buckets[k];
            rest -= take;
        }
        for (int k = 0; k < value.Length; k++)
        {
            double seconds = value[k] / _ticksPerSecond;
            for (ulong n = delta.Buckets[k]; n > 0; n--)
            {
                _duration.Record(seconds, tags);
            }
        }
    }

    private KeyValuePair<string, object?>[] Labels(FunctionTotals f)
    {
        if (!_labels.TryGetValue(f, out var labels))
        {
            labels = [new("process", _process), new("pid", _pid), new("module", f.Site.Site.ModuleName), new("function", f.Site.Function)];
            _labels[f] = labels;
        }
        return labels;
    }

    private IEnumerable<Measurement<long>> ObserveCalls()
    {
        lock (_gate)
        {
            return _calls;
        }
    }

    private IEnumerable<Measurement<double>> ObserveSelfTime()
    {
        lock (_gate)
        {
            return _selfTime;
        }
    }

    public void Dispose()
    {
        _provider.Dispose();
        _meter.Dispose();
    }
}
