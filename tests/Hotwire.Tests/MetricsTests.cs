using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace Hotwire.Tests;

/// <summary>
/// The profiler's metrics as a fleet collects them: a real Prometheus server (Debian's package,
/// scripts/check-deps.sh installs it) scraping `hotwire metrics`, and OTLP pushed over HTTP to a
/// receiver that decodes the protobuf the exporter sends.
/// </summary>
[Collection("engine")]
public class MetricsTests
{
    [Fact]
    public void Prometheus_scraping_hotwire_metrics_counts_exactly_the_calls_the_target_made()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Metrics));
        int port = FreePort();
        using Process hotwire = HotwireCli.Start("metrics", "--pid", Pid(target), "-F", "work", "-F", "leaf", "-F", "nap", "--prometheus", $"127.0.0.1:{port}");
        try
        {
            AwaitLine(hotwire.StandardError, "hotwire: profiling 3 functions");
            target.WriteLine("calls 25000");
            Assert.Equal("done 25000", target.ReadLine(TimeSpan.FromSeconds(20)));
            target.WriteLine("naps 20 2000");   // 20 calls of at least 2 ms each
            Assert.Equal("done 20", target.ReadLine(TimeSpan.FromSeconds(20)));

            using var prometheus = PrometheusServer.Start($"127.0.0.1:{port}");
            string work = $"{{function=\"work\",job=\"hotwire\"}}";
            Assert.Equal(25000, prometheus.AwaitValue($"hotwire_function_calls_total{work}", 25000));
            Assert.Equal(25000, prometheus.AwaitValue($"hotwire_function_duration_seconds_count{work}", 25000));
            Assert.Equal(25000, prometheus.AwaitValue($"hotwire_function_calls_total{{function=\"leaf\"}}", 25000));

            JsonElement series = prometheus.Query($"hotwire_function_calls_total{work}").Single();
            JsonElement labels = series.GetProperty("metric");
            Assert.Equal("prog", labels.GetProperty("process").GetString());        // the target's comm
            Assert.Equal("prog", labels.GetProperty("module").GetString());
            Assert.Equal(Pid(target), labels.GetProperty("pid").GetString());
            Assert.Equal($"127.0.0.1:{port}", labels.GetProperty("instance").GetString());

            // Durations: every nap lasted 2 ms or more, so no bucket below 2 ms holds one.
            Assert.Equal(20, prometheus.AwaitValue("hotwire_function_duration_seconds_count{function=\"nap\"}", 20));
            var buckets = prometheus.Query("hotwire_function_duration_seconds_bucket{function=\"nap\"}")
                .Select(b => (Le: Number(b.GetProperty("metric").GetProperty("le").GetString()!), Count: Value(b)))
                .OrderBy(b => b.Le).ToList();
            Assert.True(buckets.Count > 10, $"{buckets.Count} buckets");
            Assert.All(buckets.Where(b => b.Le < 0.002), b => Assert.Equal(0, b.Count));
            Assert.Equal(20, buckets[^1].Count);
            Assert.True(double.IsPositiveInfinity(buckets[^1].Le));
            double sum = Value(prometheus.Query("hotwire_function_duration_seconds_sum{function=\"nap\"}").Single());
            Assert.InRange(sum, 20 * 0.002, 20 * 1.0);
            double workSum = Value(prometheus.Query($"hotwire_function_duration_seconds_sum{work}").Single());
            double leafSum = Value(prometheus.Query("hotwire_function_duration_seconds_sum{function=\"leaf\"}").Single());
            Assert.True(workSum > leafSum, $"work {workSum} s includes leaf {leafSum} s");
            Stop(hotwire, out string rest);
            Assert.True(hotwire.ExitCode == 0, rest);
            Assert.Contains("50020 calls of 3 functions exported", rest);
        }
        finally
        {
            KillIfRunning(hotwire);
        }
        KillTests.AssertTextEqualsFile(target.Pid, TargetBuilder.Get(Flavour.Metrics), "after hotwire metrics");
    }

    [Fact]
    public async Task Record_with_the_profiler_serves_the_same_metrics_while_it_records()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Metrics));
        int port = FreePort();
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-metrics-{Guid.NewGuid():N}");
        using Process hotwire = HotwireCli.Start("record", "--tracer", "profile", "--pid", Pid(target), "-F", "work", "-o", dir, "--prometheus", $"127.0.0.1:{port}");
        try
        {
            AwaitLine(hotwire.StandardError, "hotwire: recording 1 functions");
            target.WriteLine("calls 3000");
            Assert.Equal("done 3000", target.ReadLine(TimeSpan.FromSeconds(20)));
            using var http = new HttpClient();
            string line = "";
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < TimeSpan.FromSeconds(20) && !line.EndsWith(" 3000", StringComparison.Ordinal))
            {
                await Task.Delay(200);
                line = (await http.GetStringAsync($"http://127.0.0.1:{port}/metrics")).Split('\n').FirstOrDefault(l => l.StartsWith("hotwire_function_calls_total{", StringComparison.Ordinal)) ?? "";
            }
            Assert.Contains("function=\"work\"", line);
            Assert.EndsWith(" 3000", line);
            Stop(hotwire, out string rest);
            Assert.True(hotwire.ExitCode == 0, rest);
        }
        finally
        {
            KillIfRunning(hotwire);
        }
        Hotwire.Tracing.TraceInfo info = Hotwire.Tracing.TraceData.ReadInfo(dir);
        Assert.Equal(3000UL, info.Profile!.Single().Calls);   // the recording agrees with what was exported
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void OTLP_over_HTTP_delivers_the_calls_and_the_histogram_to_a_receiver()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Metrics));
        using var receiver = new OtlpReceiver();
        using Process hotwire = HotwireCli.Start("metrics", "--pid", Pid(target), "-F", "work", "--otlp", receiver.Url, "--export-interval", "300ms");
        try
        {
            AwaitLine(hotwire.StandardError, "hotwire: profiling 1 functions");
            target.WriteLine("calls 7000");
            Assert.Equal("done 7000", target.ReadLine(TimeSpan.FromSeconds(20)));
            OtlpReceiver.Point calls = receiver.Await("hotwire.function.calls", p => p.Value == 7000);
            Assert.Equal("work", calls.Attributes["function"]);
            Assert.Equal("prog", calls.Attributes["module"]);
            Assert.Equal("prog", calls.Attributes["process"]);
            Assert.Equal((long)target.Pid, calls.Attributes["pid"]);
            Assert.True(calls.Monotonic);
            OtlpReceiver.Point duration = receiver.Await("hotwire.function.duration", p => p.Count == 7000);
            Assert.Equal(7000UL, duration.BucketCounts.Aggregate(0UL, (a, b) => a + b));
            Assert.Equal(duration.Bounds.Count + 1, duration.BucketCounts.Count);
            Assert.True(duration.Sum > 0);
            Assert.Equal("hotwire", receiver.Resource["service.name"]);
            Stop(hotwire, out string rest);
            Assert.True(hotwire.ExitCode == 0, rest);
        }
        finally
        {
            KillIfRunning(hotwire);
        }
    }

    [Theory]
    [InlineData("--prometheus", "x:y", "--prometheus: 'x:y' is not [ADDR:]PORT")]
    [InlineData("--prometheus", "70000", "--prometheus: '70000' is not [ADDR:]PORT")]
    [InlineData("--otlp", "localhost:4318", "--otlp: 'localhost:4318' is not an http:// or https:// URL")]
    [InlineData("--otlp-protocol", "udp", "--otlp-protocol takes http or grpc, not 'udp'")]
    public void Bad_metrics_options_are_one_line_errors_before_anything_is_touched(string option, string value, string message)
    {
        CliResult result = HotwireCli.Run("metrics", "--pid", "1", option, value);
        Assert.Equal(2, result.ExitCode);
        Assert.Equal($"hotwire: {message}", result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Single()[..($"hotwire: {message}".Length)]);
    }

    [Fact]
    public void Metrics_needs_a_destination_and_record_needs_the_profiler()
    {
        CliResult none = HotwireCli.Run("metrics", "--pid", "1");
        Assert.Equal(2, none.ExitCode);
        Assert.StartsWith("hotwire: say where the metrics go", none.Stderr);
        CliResult function = HotwireCli.Run("record", "--pid", "1", "--prometheus", "9464");
        Assert.Equal(2, function.ExitCode);
        Assert.StartsWith("hotwire: --prometheus and --otlp export the profiler's per-function figures: record with --tracer profile", function.Stderr);
    }

    [Fact]
    public void A_port_in_use_is_one_error_and_the_target_is_not_touched()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Metrics));
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        CliResult result = HotwireCli.Run("metrics", "--pid", Pid(target), "--prometheus", $"127.0.0.1:{port}");
        Assert.Equal(1, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"hotwire: --prometheus: cannot listen on 127.0.0.1:{port}: ", line);
        Assert.DoesNotContain(Hotwire.Procfs.ProcMaps.Read(target.Pid), m => m.Path.Contains("hotwire", StringComparison.OrdinalIgnoreCase));
    }

    internal static string Pid(TargetProcess target) => target.Pid.ToString(CultureInfo.InvariantCulture);

    internal static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    internal static void AwaitLine(StreamReader reader, string prefix)
    {
        var seen = new List<string>();
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(60))
        {
            Task<string?> line = reader.ReadLineAsync();
            if (!line.Wait(TimeSpan.FromSeconds(60)) || line.Result is null)
            {
                break;
            }
            seen.Add(line.Result);
            if (line.Result.StartsWith(prefix, StringComparison.Ordinal))
            {
                return;
            }
        }
        throw new Xunit.Sdk.XunitException($"no line starting with '{prefix}'; saw: {string.Join(" | ", seen)}");
    }

    /// <summary>SIGTERM, as a service manager stops a daemon; returns what it printed after.</summary>
    internal static void Stop(Process hotwire, out string stderr)
    {
        if (!hotwire.HasExited)
        {
            Hotwire.Interop.Ptrace.kill(hotwire.Id, 15);
        }
        Task<string> rest = hotwire.StandardError.ReadToEndAsync();
        Task<string> stdout = hotwire.StandardOutput.ReadToEndAsync();
        if (!hotwire.WaitForExit(30_000))
        {
            hotwire.Kill();
            throw new TimeoutException("hotwire did not stop within 30 s of SIGTERM");
        }
        stderr = rest.Result;
    }

    internal static void KillIfRunning(Process hotwire)
    {
        try
        {
            if (!hotwire.HasExited)
            {
                hotwire.Kill();
                hotwire.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException)
        {
        }
    }

    private static double Value(JsonElement series) => Number(series.GetProperty("value")[1].GetString()!);

    private static double Number(string text) => text == "+Inf" ? double.PositiveInfinity : double.Parse(text, CultureInfo.InvariantCulture);

    /// <summary>A real Prometheus server on loopback, scraping one target every second, with its own temporary storage.</summary>
    private sealed class PrometheusServer : IDisposable
    {
        private readonly Process _process;
        private readonly string _dir;
        private readonly HttpClient _http = new();
        private readonly string _url;

        private PrometheusServer(Process process, string dir, string url) => (_process, _dir, _url) = (process, dir, url);

        public static PrometheusServer Start(string scrapeTarget)
        {
            string dir = Path.Combine(Path.GetTempPath(), $"hotwire-prometheus-{Guid.NewGuid():N}");
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "prometheus.yml"), $"""
                global:
                  scrape_interval: 1s
                  scrape_timeout: 900ms
                scrape_configs:
                  - job_name: hotwire
                    static_configs:
                      - targets: ['{scrapeTarget}']
                """);
            int port = FreePort();
            var psi = new ProcessStartInfo("prometheus")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                WorkingDirectory = dir,
            };
            foreach (string a in new[] { $"--config.file={dir}/prometheus.yml", $"--storage.tsdb.path={dir}/data", $"--web.listen-address=127.0.0.1:{port}" })
            {
                psi.ArgumentList.Add(a);
            }
            Process process;
            try
            {
                process = Process.Start(psi)!;
            }
            catch (System.ComponentModel.Win32Exception)
            {
                throw new Xunit.Sdk.XunitException("prometheus is not installed: run scripts/check-deps.sh --tests (Debian package prometheus)");
            }
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            var server = new PrometheusServer(process, dir, $"http://127.0.0.1:{port}");
            var deadline = Stopwatch.StartNew();
            while (true)
            {
                try
                {
                    if (server._http.GetAsync($"{server._url}/-/ready").Result.IsSuccessStatusCode)
                    {
                        return server;
                    }
                }
                catch (AggregateException)
                {
                }
                if (process.HasExited || deadline.Elapsed > TimeSpan.FromSeconds(30))
                {
                    server.Dispose();
                    throw new Xunit.Sdk.XunitException("prometheus did not become ready within 30 s");
                }
                Thread.Sleep(100);
            }
        }

        public List<JsonElement> Query(string promql)
        {
            string body = _http.GetStringAsync($"{_url}/api/v1/query?query={Uri.EscapeDataString(promql)}").Result;
            using JsonDocument doc = JsonDocument.Parse(body);
            Assert.Equal("success", doc.RootElement.GetProperty("status").GetString());
            return [.. doc.RootElement.GetProperty("data").GetProperty("result").EnumerateArray().Select(e => e.Clone())];
        }

        /// <summary>The query's single value once it equals <paramref name="expected"/> or 30 s have passed (then the last value seen).</summary>
        public double AwaitValue(string promql, double expected)
        {
            double last = double.NaN;
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < TimeSpan.FromSeconds(30))
            {
                List<JsonElement> result = Query(promql);
                if (result.Count == 1)
                {
                    last = Value(result[0]);
                    if (last == expected)
                    {
                        return last;
                    }
                }
                Thread.Sleep(250);
            }
            return last;
        }

        public void Dispose()
        {
            try
            {
                if (!_process.HasExited)
                {
                    _process.Kill();
                    _process.WaitForExit(10_000);
                }
            }
            catch (InvalidOperationException)
            {
            }
            _process.Dispose();
            _http.Dispose();
            try
            {
                Directory.Delete(_dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
