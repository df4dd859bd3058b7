using System.CommandLine;
using System.Globalization;
using Hotwire.Cli.Metrics;
using Hotwire.Output;
using Hotwire.Patching;
using Hotwire.Tracing;

namespace Hotwire.Cli.Commands;

/// <summary><c>hotwire record</c> and <c>hotwire live</c>: the function tracer on a running process or a program it starts.</summary>
public static class RecordCommand
{
    public static Command Create(bool live)
    {
        var target = new TargetOptions();
        var metrics = new MetricsOptions();
        var args = new Option<int>("--args") { Description = "Record the first N integer arguments of each call (0-6)", DefaultValueFactory = _ => 0 };
        var bufferSize = new Option<string>("--buffer-size") { Description = "Ring buffer per thread, a power of two (e.g. 64K, 1M, 16M)", DefaultValueFactory = _ => "32M" };
        var duration = OptionValues.Seconds("--duration", "Stop after this long", "-d");
        var output = new Option<string>("--output", "-o") { Description = "Data directory", DefaultValueFactory = _ => "hotwire.data" };
        var force = new Option<bool>("--force") { Description = "Overwrite the recording already in the data directory" };
        var tids = new Option<string?>("--tid") { Description = "Only these threads (comma-separated tids)" };
        var tracerName = new Option<string>("--tracer") { Description = "function (entries), function_graph (entries, exits, durations) or profile (per-function times, no events)", DefaultValueFactory = _ => Tracers.Function };
        var retval = new Option<bool>("--retval") { Description = "function_graph: record each call's return value" };
        var depth = new Option<int?>("--depth", "-D") { Description = "function_graph/profile: follow calls only this many traced frames deep" };
        var timeFilter = new Option<string?>("--time-filter", "-t") { Description = "function_graph: drop calls shorter than TIME (e.g. 10us, 1.5ms), keeping their callers" };
        var noDrop = new Option<bool>("--no-drop") { Description = "A thread whose buffer is full waits for room instead of dropping the event (uftrace's way; the time spent waiting is reported)" };
        var command = live
            ? new Command("live", "Trace function calls and print them as they happen (also recorded to -o)")
            : new Command("record", "Record every call of the chosen functions to a data directory (hotwire replay reads it)");
        target.AddTo(command);
        metrics.AddTo(command);
        foreach (Option o in new Option[] { args, bufferSize, duration, output, force, tids, tracerName, retval, depth, timeFilter, noDrop })
        {
            command.Options.Add(o);
        }
        command.SetAction(r => (int)Run(target, metrics, r, live, r.GetValue(args), r.GetValue(bufferSize)!, r.GetValue(duration), r.GetValue(output)!, r.GetValue(force), r.GetValue(tids),
            r.GetValue(tracerName)!, r.GetValue(retval), r.GetValue(depth), r.GetValue(timeFilter), r.GetValue(noDrop)));
        return command;
    }

    private static ExitCode Run(TargetOptions target, MetricsOptions metricsOptions, ParseResult result, bool live, int args, string bufferSize, TimeSpan? duration, string dir, bool force, string? tidList,
        string tracerName, bool retval, int? depth, string? timeFilter, bool noDrop)
    {
        using StopSignals stop = StopSignals.Claim();
        if (tracerName is not (Tracers.Function or Tracers.FunctionGraph or Tracers.Profile))
        {
            throw new UsageException($"--tracer takes function, function_graph or profile, not '{tracerName}'");
        }
        bool graph = tracerName != Tracers.Function;
        if (!graph && (retval || depth is not null || timeFilter is not null))
        {
            throw new UsageException("--retval, --depth and --time-filter need --tracer function_graph (or profile for --depth): the function tracer sees entries only");
        }
        if (depth is <= 0)
        {
            throw new UsageException($"--depth must be at least 1, not {depth}");
        }
        long timeFilterNs = timeFilter is null ? 0 : OptionValues.ParseTimeNs(timeFilter, "--time-filter", "ns");
        if (tracerName == Tracers.Profile && (retval || timeFilterNs > 0))
        {
            throw new UsageException("--retval and --time-filter are for --tracer function_graph; the profiler keeps no per-call events");
        }
        if (live && graph)
        {
            throw new UsageException($"live prints the function tracer's entries; for {tracerName} use hotwire record, then hotwire replay or report");
        }
        if (noDrop && tracerName == Tracers.Profile)
        {
            throw new UsageException("--no-drop is for the function and function_graph tracers; the profiler writes no events and loses none");
        }
        var buffers = new TraceBufferOptions(ParseSize(bufferSize), TraceBufferOptions.ThreadsFor(result.GetValue(target.Pid)), args) { NoDrop = noDrop };
        if (!buffers.TryValidate(out string? bufferError))
        {
            throw new UsageException(bufferError);
        }
        IReadOnlySet<int>? tids = ParseTids(tidList);
        target.CheckThreads(result, tids);
        if (!force && (File.Exists(Path.Combine(dir, TraceData.InfoFile)) || File.Exists(Path.Combine(dir, TraceData.EventsFile))))
        {
            throw new HotwireException($"{dir} already holds a recording; remove it, choose another -o, or pass --force");
        }
        MetricsTargets metrics = metricsOptions.Parse(result);
        if (metrics.Any && tracerName != Tracers.Profile)
        {
            throw new UsageException("--prometheus and --otlp export the profiler's per-function figures: record with --tracer profile (or use hotwire top or hotwire metrics)");
        }
        var graphOptions = new GraphOptions(tracerName == Tracers.Profile ? GraphMode.Profile : GraphMode.Events, depth ?? 0, retval);

        RingTracer tracer = graph
            ? new GraphTracer(buffers, graphOptions, target.Filters(result), target.Notraces(result))
            : new FunctionTracer(buffers, target.Filters(result), target.Notraces(result));
        Recorder? recorder = null;
        LivePrinter? printer = live ? new LivePrinter() : null;
        IReadOnlyList<SiteRecord> sites = [];
        double ticksPerSecond = metrics.Any ? ProfileMonitor.MeasureTicksPerSecond() : 0;
        ProfileExporter? exporter = metrics.Any ? ProfileExporter.Start(metrics, ticksPerSecond) : null;
        ProfileMonitor? monitor = null;
        // Tracing starts before the program's first instruction at launch, right after attach otherwise.
        (ulong shared, ulong perSite) = graph ? GraphTracer.SharedBytes(buffers, graphOptions) : (TraceBufferOptions.SharedBytes(buffers), 0);
        Session session;
        try
        {
            session = target.Open(result, tracer, stop, shared, extraSharedBytesPerSite: perSite, beforeRun: s =>
            {
                recorder = new Recorder(s, tracer, dir, printer is null ? null : printer.Print, tids) { TimeFilterNs = timeFilterNs };
                sites = s.Register(tracer);
                if (exporter is not null)
                {
                    monitor = new ProfileMonitor((GraphTracer)tracer, sites, ticksPerSecond);
                    exporter.SetProcess(ProcessName(s.Pid), s.Pid);
                }
                recorder.NoteTracedSites(sites);
                printer?.Start(s, sites);
                recorder.Start();
            });
        }
        catch
        {
            exporter?.Dispose();
            throw;
        }
        int? exitStatus = null;
        bool targetGone = false, execed = false;
        try
        {
            // With --pid, how long the target was held: one thread, stopped for the attach only.
            string stopped = session.Launched ? "" : $" (attach stopped one thread for {session.LongestStop.TotalMilliseconds:F2} ms)";
            Console.Error.WriteLine($"hotwire: recording {sites.Count} functions in pid {session.Pid} to {dir}{stopped}; Ctrl-C to stop");
            if (exporter is not null)
            {
                Console.Error.WriteLine($"hotwire: {metrics.Describe()}");
            }
            long nextSample = Environment.TickCount64 + 1000;
            if (duration is TimeSpan limit)
            {
                stop.CancelAfter(limit);
            }
            bool progress = !Console.IsErrorRedirected && !live;
            long lastProgress = 0;
            while (!stop.IsCancellationRequested && recorder!.Healthy)
            {
                if (progress && Environment.TickCount64 - lastProgress > 500)
                {
                    Console.Error.Write($"\rhotwire: {recorder.Events:N0} events so far ");
                    lastProgress = Environment.TickCount64;
                }
                if (session.Launched && session.WaitForExit(stop.Token, TimeSpan.FromMilliseconds(50)) is int status)
                {
                    exitStatus = status;
                    break;
                }
                if (!session.Launched && !session.IsAlive())
                {
                    targetGone = true;
                    break;
                }
                if (session.Execed())
                {
                    execed = true;
                    break;
                }
                stop.Token.WaitHandle.WaitOne(50);
                if (monitor is not null && Environment.TickCount64 >= nextSample)
                {
                    exporter!.Update(monitor.Sample(), monitor.Functions);
                    nextSample += 1000;
                }
            }
            // Processes forked from it that outlive it are recorded until they exit too.
            if ((exitStatus is not null || targetGone) && recorder!.Healthy && !stop.IsCancellationRequested
                && session.ForkedProcesses() is { Count: > 0 } forks)
            {
                Console.Error.WriteLine($"hotwire: pid {session.Pid} ended; recording the {Plural(forks.Count, "process", "processes")} forked from it until they exit ({string.Join(", ", forks)}); Ctrl-C to stop");
                while (!stop.IsCancellationRequested && recorder.Healthy && session.ForkedProcesses().Count > 0)
                {
                    stop.Token.WaitHandle.WaitOne(100);
                }
            }
            // Order matters: the target's code first, then our data.
            if (exitStatus is null && !targetGone && !execed)
            {
                session.Unregister(tracer);
            }
            if (monitor is not null)
            {
                exporter!.Update(monitor.Sample(), monitor.Functions);   // the last calls, before the cells go with the detach
            }
        }
        catch
        {
            exporter?.Dispose();
            recorder?.Dispose();
            session.Dispose();
            throw;
        }
        RecordSummary summary = recorder!.Finish(target.Describe(result));
        if (!Console.IsErrorRedirected && !live)
        {
            Console.Error.Write("\r");
        }
        session.Dispose();
        printer?.Flush();
        if (session.RestoredForks.Count > 0)
        {
            Console.Error.WriteLine($"hotwire: {Plural(session.RestoredForks.Count, "process", "processes")} forked from pid {session.Pid} still ran traced code: restored ({string.Join(", ", session.RestoredForks)}); their later calls are not recorded");
        }
        bool flushed = exporter?.Flush() ?? true;
        exporter?.Dispose();

        string ending = exitStatus is int e ? $"; the program exited with status {e}"
            : targetGone ? $"; pid {session.Pid} exited during the recording"
            : execed ? $"; pid {session.Pid} executed a new program, which ended the recording (Hotwire does not follow exec yet: attach to it again)"
            : $"; pid {session.Pid} runs on with its original code";
        Console.Error.WriteLine(
            $"hotwire: {summary.Events} events, {summary.Lost} lost, {summary.Threads} threads in {summary.Elapsed.TotalSeconds:F1} s, "
            + $"{summary.BytesWritten / 1024.0 / 1024.0:F1} MB written to {dir}{ending}");
        if (noDrop)
        {
            Console.Error.WriteLine($"hotwire: --no-drop: threads waited {summary.WriterWait.TotalMilliseconds:F1} ms in all for room in their buffers");
        }
        if (summary.Lost > 0 && summary.DiskWait.TotalMilliseconds >= 50)
        {
            Console.Error.WriteLine($"hotwire: {summary.Lost} events were lost while writing to {dir} held the recorder up for {summary.DiskWait.TotalMilliseconds:F0} ms (the disk took the events more slowly than they came): record to a faster file system (e.g. -o /dev/shm/...), or with --no-drop");
        }
        else if (summary.Lost > 0)
        {
            Console.Error.WriteLine($"hotwire: {summary.Lost} events were lost because a thread's buffer was full (or a signal handler interrupted Hotwire's own code): record with a larger --buffer-size");
        }
        if (summary.ShadowOverflow > 0)
        {
            Console.Error.WriteLine($"hotwire: {summary.ShadowOverflow} calls were not followed because a thread was more than {GraphTracer.Capacity} traced frames deep (limit them with --depth)");
        }
        if (tracerName == Tracers.Profile && summary.WriteError is null)
        {
            Console.Error.WriteLine($"hotwire: hotwire report -d {dir} shows the profile");
        }
        if (!flushed)
        {
            Console.Error.WriteLine($"hotwire: the last metrics could not be pushed to {metrics.Otlp} (is the collector running?)");
        }
        if (summary.WriteError is { } error)
        {
            Console.Error.WriteLine($"hotwire: writing {dir} failed ({error}): tracing was stopped; the {summary.BytesWritten} bytes written before are kept");
            return ExitCode.Failure;
        }
        if (exitStatus is > 128)
        {
            Console.Error.WriteLine($"hotwire: the program was killed by signal {exitStatus - 128}; the recording of what it did until then is in {dir}");
            return ExitCode.Failure;
        }
        return ExitCode.Success;
    }

    private static string ProcessName(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim();
        }
        catch (IOException)
        {
            return $"pid-{pid}";
        }
    }

    public static int ParseSize(string text)
    {
        string t = text.Trim().ToUpperInvariant();
        long scale = t.EndsWith('K') ? 1 << 10 : t.EndsWith('M') ? 1 << 20 : t.EndsWith('G') ? 1 << 30 : 1;
        if (scale > 1)
        {
            t = t[..^1];
        }
        if (!long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n * scale > int.MaxValue || n <= 0)
        {
            throw new UsageException($"--buffer-size: '{text}' is not a size (examples: 64K, 1M, 16M)");
        }
        return (int)(n * scale);
    }

    public static IReadOnlySet<int>? ParseTids(string? list)
    {
        if (string.IsNullOrWhiteSpace(list))
        {
            return null;
        }
        var set = new HashSet<int>();
        foreach (string part in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int tid) || tid <= 0)
            {
                throw new UsageException($"--tid: '{part}' is not a thread id (give a comma-separated list like 1234,1235)");
            }
            set.Add(tid);
        }
        return set;
    }

    private static string Plural(int n, string one, string many) => $"{n} {(n == 1 ? one : many)}";
}

/// <summary>Prints events as the recorder drains them, in the replay format.</summary>
public sealed class LivePrinter
{
    private readonly object _gate = new();
    private TraceReader? _reader;
    private readonly TextWriter _out = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = false };
    private readonly Dictionary<int, ThreadInfo> _threads = [];
    private TraceInfo? _info;

    public void Start(Session session, IReadOnlyList<SiteRecord> sites)
    {
        // A provisional clock: two samples 10 ms apart give the TSC rate well enough to print.
        ClockSample a = TscClock.Sample();
        Thread.Sleep(10);
        ClockSample b = TscClock.Sample();
        _info = new TraceInfo
        {
            Pid = session.Pid,
            Clock = new ClockInfo { StartTsc = a.Tsc, StartNs = a.MonotonicNs, EndTsc = b.Tsc, EndNs = b.MonotonicNs },
            Sites = sites.Select(s => new SiteInfo { Index = s.Index, Function = s.Function, Module = s.Site.ModuleName, Address = s.Address }).ToList(),
            Modules = session.Image.Modules.Select(Recorder.Module).ToList(),
            Threads = [],
        };
        lock (_gate)
        {
            _reader = new TraceReader(_info);
        }
        _out.Write("#            TASK-TID         TIMESTAMP  FUNCTION\n");
    }

    public void Print(int tid, RawEvent e)
    {
        lock (_gate)
        {
            if (_reader is null || _info is null)
            {
                return;
            }
            if (!_threads.ContainsKey(tid))
            {
                string name;
                try
                {
                    name = File.ReadAllText($"/proc/{_info.Pid}/task/{tid}/comm").Trim();
                }
                catch (IOException)
                {
                    name = $"tid-{tid}";
                }
                var t = new ThreadInfo { Tid = tid, Pid = _info.Pid, Name = name };
                _threads[tid] = t;
                _info.Threads.Add(t);
                _reader = new TraceReader(_info);
            }
            _out.Write(FunctionTraceWriter.Format(_reader.Line(tid, e)));
            _out.Write('\n');
            if (++_lines % 64 == 0)
            {
                _out.Flush();
            }
        }
    }

    private long _lines;

    public void Flush()
    {
        lock (_gate)
        {
            _out.Flush();
        }
    }
}
