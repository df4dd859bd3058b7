using System.Runtime.CompilerServices;
using Hotwire.Patching;

namespace Hotwire.Tracing;

/// <summary>The duration histogram of one profile cell: u32 counts of log2(ticks) buckets.</summary>
[InlineArray(GraphTracer.HistogramBuckets)]
public struct HistogramCounts
{
    private uint _first;
}

/// <summary>A copy of one (thread, function) cell of the profiler.</summary>
public struct ProfileCell
{
    public ulong Calls;
    public ulong TotalTicks;
    public ulong SelfTicks;
    public ulong MaxTicks;
    public ulong MinTicks;
    public HistogramCounts Buckets;
}

/// <summary>One traced function's figures since the monitor started, summed over its threads.</summary>
public sealed class FunctionTotals(SiteRecord site)
{
    public SiteRecord Site { get; } = site;

    public ulong Calls { get; internal set; }

    public ulong TotalTicks { get; internal set; }

    public ulong SelfTicks { get; internal set; }

    /// <summary>The longest call seen by any of its threads, since the profiler started.</summary>
    public ulong MaxTicks { get; internal set; }

    /// <summary>Calls per duration bucket (<see cref="ProfileMonitor.BucketLowTicks"/>), u32 wraps in the target undone.</summary>
    public ulong[] Buckets { get; } = new ulong[GraphTracer.HistogramBuckets];
}

/// <summary>What one function did between two samples.</summary>
public sealed record FunctionDelta(FunctionTotals Function, ulong Calls, ulong TotalTicks, ulong SelfTicks, ulong[] Buckets);

/// <summary>What one thread did between two samples: calls into traced functions and the time spent in them (self time, so nested calls count once).</summary>
public sealed record ThreadDelta(int Tid, ulong Calls, ulong SelfTicks);

/// <summary>The changes since the previous sample.</summary>
public sealed record ProfileSample(double Seconds, IReadOnlyList<FunctionDelta> Functions, IReadOnlyList<ThreadDelta> Threads);

/// <summary>
/// Reads the profiler's cells in a live process, repeatedly: running totals per function over all
/// threads, and what changed since the last look (for rates and for histograms exported as
/// increments). The target increments its u32 bucket counts without bound; looking at least once
/// per 2^32 calls of a function in one thread (40 s at 100 M calls/s) keeps every difference exact.
/// Not thread-safe: one caller samples.
/// </summary>
public sealed class ProfileMonitor
{
    private readonly GraphTracer _tracer;
    private readonly int[] _columns;            // profile columns of the traced functions
    private readonly FunctionTotals[] _functions;   // in the same order
    private readonly Dictionary<(int Row, int Function), ProfileCell> _last = [];
    private readonly Dictionary<int, int> _tids = [];   // row → tid, once known
    private long _lastSampleNs;

    public ProfileMonitor(GraphTracer tracer, IReadOnlyList<SiteRecord> sites, double ticksPerSecond)
    {
        if (tracer.Options.Mode != GraphMode.Profile)
        {
            throw new ArgumentException("the monitor reads the profile tracer's cells", nameof(tracer));
        }
        _tracer = tracer;
        // The rows have a column per site of the process; only the traced ones are ever written.
        var byIndex = sites.ToDictionary(s => s.Index);
        int[] columnSites = tracer.ProfileSites();
        _columns = [.. Enumerable.Range(0, columnSites.Length).Where(c => byIndex.ContainsKey(columnSites[c]))];
        _functions = [.. _columns.Select(c => new FunctionTotals(byIndex[columnSites[c]]))];
        TicksPerSecond = ticksPerSecond;
        _lastSampleNs = TscClock.MonotonicNs();
    }

    /// <summary>The TSC rate, measured over 50 ms: durations in seconds (and histogram bounds) come from it.</summary>
    public static double MeasureTicksPerSecond()
    {
        ClockSample a = TscClock.Sample();
        Thread.Sleep(50);
        ClockSample b = TscClock.Sample();
        return new ClockCalibration(a, b).TscPerNs * 1e9;
    }

    /// <summary>TSC ticks per second.</summary>
    public double TicksPerSecond { get; }

    public IReadOnlyList<FunctionTotals> Functions => _functions;

    /// <summary>The lowest duration, in ticks, of histogram bucket <paramref name="k"/> (bucket 0 starts at 0).</summary>
    public static ulong BucketLowTicks(int k) => k == 0 ? 0 : 1UL << k;

    public double TicksToSeconds(double ticks) => ticks / TicksPerSecond;

    /// <summary>Reads every cell that changed and returns what changed.</summary>
    public ProfileSample Sample()
    {
        long now = TscClock.MonotonicNs();
        double seconds = (now - _lastSampleNs) / 1e9;
        _lastSampleNs = now;
        var changed = new Dictionary<int, FunctionDelta>();
        var threads = new List<ThreadDelta>();
        int rows = _tracer.ProfileRows;
        ProfileCell cell = default;
        for (int row = 0; row < rows; row++)
        {
            if (!_tids.TryGetValue(row, out int tid))
            {
                tid = _tracer.ProfileTid(row);
                if (tid != 0)
                {
                    _tids[row] = tid;
                }
            }
            ulong threadCalls = 0, threadSelf = 0;
            for (int f = 0; f < _functions.Length; f++)
            {
                _last.TryGetValue((row, f), out ProfileCell before);
                if (_tracer.ProfileCalls(row, _columns[f]) == before.Calls)
                {
                    continue;
                }
                _tracer.ReadProfileCell(row, _columns[f], ref cell);
                if (!changed.TryGetValue(f, out FunctionDelta? delta))
                {
                    delta = new FunctionDelta(_functions[f], 0, 0, 0, new ulong[GraphTracer.HistogramBuckets]);
                }
                ulong calls = cell.Calls - before.Calls, total = cell.TotalTicks - before.TotalTicks, self = cell.SelfTicks - before.SelfTicks;
                for (int k = 0; k < GraphTracer.HistogramBuckets; k++)
                {
                    delta.Buckets[k] += unchecked(cell.Buckets[k] - before.Buckets[k]);   // modulo 2^32
                }
                changed[f] = delta with { Calls = delta.Calls + calls, TotalTicks = delta.TotalTicks + total, SelfTicks = delta.SelfTicks + self };
                FunctionTotals totals = _functions[f];
                totals.MaxTicks = Math.Max(totals.MaxTicks, cell.MaxTicks);
                threadCalls += calls;
                threadSelf += self;
                _last[(row, f)] = cell;
            }
            if (threadCalls > 0)
            {
                threads.Add(new ThreadDelta(tid, threadCalls, threadSelf));
            }
        }
        foreach (FunctionDelta d in changed.Values)
        {
            FunctionTotals t = d.Function;
            t.Calls += d.Calls;
            t.TotalTicks += d.TotalTicks;
            t.SelfTicks += d.SelfTicks;
            for (int k = 0; k < GraphTracer.HistogramBuckets; k++)
            {
                t.Buckets[k] += d.Buckets[k];
            }
        }
        return new ProfileSample(seconds, [.. changed.Values], threads);
    }
}
