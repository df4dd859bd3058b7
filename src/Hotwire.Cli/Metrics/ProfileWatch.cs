using System.CommandLine;
using Hotwire.Cli.Commands;
using Hotwire.Patching;
using Hotwire.Tracing;

namespace Hotwire.Cli.Metrics;

/// <summary>
/// The profiler on a live process, looked at repeatedly (top, metrics): attach or launch with
/// the profile tracer, sample its cells, feed the exporters; at the end restore the target's
/// code, take the last sample, detach, then flush the exporters — in that order.
/// </summary>
public sealed class ProfileWatch
{
    private readonly Session _session;
    private readonly GraphTracer _tracer;
    private int? _exitStatus;
    private bool _gone, _execed;

    private ProfileWatch(Session session, GraphTracer tracer, ProfileMonitor monitor, ProfileExporter? exporter, IReadOnlyList<SiteRecord> sites)
    {
        _session = session;
        _tracer = tracer;
        Monitor = monitor;
        Exporter = exporter;
        Sites = sites;
        ProcessName = ReadComm(session.Pid);
        exporter?.SetProcess(ProcessName, session.Pid);
    }

    public ProfileMonitor Monitor { get; }

    public ProfileExporter? Exporter { get; }

    public IReadOnlyList<SiteRecord> Sites { get; }

    public int Pid => _session.Pid;

    public string ProcessName { get; }

    /// <summary>
    /// Starts the exporters first (a port in use fails before the target is touched), then
    /// attaches to --pid or launches the program with the profiler on the chosen functions.
    /// </summary>
    public static ProfileWatch Open(TargetOptions target, ParseResult result, StopSignals stop, int? depth, MetricsTargets metrics)
    {
        if (depth is <= 0)
        {
            throw new UsageException($"--depth must be at least 1, not {depth}");
        }
        double ticksPerSecond = ProfileMonitor.MeasureTicksPerSecond();
        ProfileExporter? exporter = metrics.Any ? ProfileExporter.Start(metrics, ticksPerSecond) : null;
        try
        {
            var buffers = new TraceBufferOptions(4096, TraceBufferOptions.ThreadsFor(result.GetValue(target.Pid)));
            var options = new GraphOptions(GraphMode.Profile, depth ?? 0);
            var tracer = new GraphTracer(buffers, options, target.Filters(result), target.Notraces(result));
            (ulong shared, ulong perSite) = GraphTracer.SharedBytes(buffers, options);
            IReadOnlyList<SiteRecord> sites = [];
            Session session = target.Open(result, tracer, stop, shared, extraSharedBytesPerSite: perSite, beforeRun: s => sites = s.Register(tracer));
            try
            {
                return new ProfileWatch(session, tracer, new ProfileMonitor(tracer, sites, ticksPerSecond), exporter, sites);
            }
            catch
            {
                session.Dispose();
                throw;
            }
        }
        catch
        {
            exporter?.Dispose();
            throw;
        }
    }

    /// <summary>Reads what changed and hands it to the exporters.</summary>
    public ProfileSample Sample()
    {
        ProfileSample sample = Monitor.Sample();
        Exporter?.Update(sample, Monitor.Functions);
        return sample;
    }

    /// <summary>Waits up to <paramref name="wait"/>; false once the target exited or executed another program.</summary>
    public bool Wait(TimeSpan wait, CancellationToken stop)
    {
        if (_session.Launched && _session.WaitForExit(stop, wait) is int status)
        {
            _exitStatus = status;
            return false;
        }
        if (!_session.Launched)
        {
            stop.WaitHandle.WaitOne(wait);
            if (!_session.IsAlive())
            {
                _gone = true;
                return false;
            }
        }
        if (_session.Execed())
        {
            _execed = true;
            return false;
        }
        return true;
    }

    /// <summary>Restores the target's code, takes the last sample, detaches, flushes the exporters; says how the target was left.</summary>
    public (ProfileSample Last, string Ending, bool Flushed) Finish()
    {
        ProfileSample last;
        try
        {
            if (_exitStatus is null && !_gone && !_execed)
            {
                _session.Unregister(_tracer);
            }
            last = Sample();
        }
        finally
        {
            _session.Dispose();
        }
        bool flushed = Exporter?.Flush() ?? true;
        Exporter?.Dispose();
        string ending = _exitStatus is int e ? $"the program exited with status {e}"
            : _gone ? $"pid {Pid} exited"
            : _execed ? $"pid {Pid} executed a new program, which ended the profile (Hotwire does not follow exec yet: attach to it again)"
            : $"pid {Pid} runs on with its original code";
        if (_session.RestoredForks.Count > 0)
        {
            ending += $"; {_session.RestoredForks.Count} forked from it still ran traced code: restored ({string.Join(", ", _session.RestoredForks)})";
        }
        return (last, ending, flushed);
    }

    /// <summary>Detaches after an error, without the last sample.</summary>
    public void Abandon()
    {
        _session.Dispose();
        Exporter?.Dispose();
    }

    /// <summary>The current names of the process's threads, by tid.</summary>
    public Dictionary<int, string> ThreadNames()
    {
        var names = new Dictionary<int, string>();
        try
        {
            foreach (string dir in Directory.EnumerateDirectories($"/proc/{Pid}/task"))
            {
                if (int.TryParse(Path.GetFileName(dir), out int tid))
                {
                    names[tid] = ReadComm(Pid, tid);
                }
            }
        }
        catch (IOException)
        {
        }
        return names;
    }

    private static string ReadComm(int pid, int? tid = null)
    {
        try
        {
            return File.ReadAllText(tid is int t ? $"/proc/{pid}/task/{t}/comm" : $"/proc/{pid}/comm").Trim();
        }
        catch (IOException)
        {
            return tid is int t ? $"tid-{t}" : $"pid-{pid}";
        }
    }
}
