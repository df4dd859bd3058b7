using System.Globalization;
using System.Text;
using Hotwire.Tracing;

namespace Hotwire.Output;

/// <summary>One function's figures in a report (times in ns).</summary>
public sealed record ReportRow(string Function, string Module, long Calls, long TotalNs, long SelfNs, long MinNs, long MaxNs)
{
    public long AvgNs => Calls == 0 ? 0 : TotalNs / Calls;
}

/// <summary>
/// uftrace report's flat profile, built while calls stream past: per site (arrays indexed by the
/// site, nothing allocated per call) the calls and the sum, minimum and maximum of their durations
/// and self times, in TSC ticks until the end. A recursive function's nested calls each count
/// toward its total, as in uftrace. Calls that straddle lost events are left out.
/// </summary>
public sealed class ReportBuilder : IFrameSink
{
    private readonly TraceInfo _info;
    private long[] _calls;
    private ulong[] _total;
    private ulong[] _self;
    private ulong[] _min;
    private ulong[] _max;

    public ReportBuilder(TraceInfo info)
    {
        _info = info;
        int sites = Math.Max(new SiteNames(info).Count, 1);
        _calls = new long[sites];
        _total = new ulong[sites];
        _self = new ulong[sites];
        _min = new ulong[sites];
        _max = new ulong[sites];
        Array.Fill(_min, ulong.MaxValue);
    }

    public void Enter(ThreadFrames thread, int frame)
    {
    }

    public void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value)
    {
        if (end == FrameEnd.Lost)
        {
            return; // its time is not known: figures are of measured calls only
        }
        ref Frame f = ref thread[frame];
        int site = f.Site;
        if ((uint)site >= (uint)_calls.Length)
        {
            Grow(site);
        }
        ulong ticks = exitTsc - f.EntryTsc;
        _calls[site]++;
        _total[site] += ticks;
        _self[site] += ticks - Math.Min(f.ChildTicks, ticks);
        _min[site] = Math.Min(_min[site], ticks);
        _max[site] = Math.Max(_max[site], ticks);
    }

    /// <summary>The rows of every function that was called.</summary>
    public List<ReportRow> Rows()
    {
        var names = new SiteNames(_info);
        var time = new TraceTime(_info.Clock);
        var rows = new List<ReportRow>();
        for (int site = 0; site < _calls.Length; site++)
        {
            if (_calls[site] > 0)
            {
                rows.Add(new ReportRow(names.Function(site), names.Module(site), _calls[site],
                    time.DurationNs(_total[site]), time.DurationNs(_self[site]), time.DurationNs(_min[site]), time.DurationNs(_max[site])));
            }
        }
        return rows;
    }

    /// <summary>The rows of a profile recording: its per-thread figures summed over the chosen threads.</summary>
    public static List<ReportRow> FromProfile(TraceInfo info, IReadOnlySet<int>? tids)
    {
        var names = new SiteNames(info);
        return (info.Profile ?? [])
            .Where(p => p.Calls > 0 && (tids is null || tids.Contains(p.Tid)))
            .GroupBy(p => p.Site)
            .OrderBy(g => g.Key)
            .Select(g => new ReportRow(names.Function(g.Key), names.Module(g.Key), (long)g.Aggregate(0UL, (n, p) => n + p.Calls),
                g.Sum(p => p.TotalNs), g.Sum(p => p.SelfNs), g.Min(p => p.MinNs), g.Max(p => p.MaxNs)))
            .ToList();
    }

    private void Grow(int site)
    {
        int size = Math.Max(site + 1, _calls.Length * 2);
        int old = _calls.Length;
        Array.Resize(ref _calls, size);
        Array.Resize(ref _total, size);
        Array.Resize(ref _self, size);
        Array.Resize(ref _min, size);
        Array.Resize(ref _max, size);
        _min.AsSpan(old).Fill(ulong.MaxValue);
    }
}

/// <summary>Sorts and prints report rows: uftrace report's text table, or CSV.</summary>
public static class ReportWriter
{
    /// <summary>The sort keys, as uftrace report's -s takes them.</summary>
    public static readonly IReadOnlyList<string> SortKeys = ["total", "self", "call", "avg", "min", "max", "func"];

    /// <summary>Parses a comma-separated list of sort keys; null and an error message if one is unknown.</summary>
    public static string[]? TryParseSortKeys(string list, out string? error)
    {
        string[] keys = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (keys.Length == 0)
        {
            error = $"give at least one sort key ({string.Join(",", SortKeys)})";
            return null;
        }
        foreach (string key in keys)
        {
            if (!SortKeys.Contains(key))
            {
                error = $"unknown sort key '{key}' (use a comma-separated list of {string.Join(",", SortKeys)})";
                return null;
            }
        }
        error = null;
        return keys;
    }

    /// <summary>Sorts by the keys in order: times and calls largest first, names alphabetically.</summary>
    public static List<ReportRow> Sort(IEnumerable<ReportRow> rows, IReadOnlyList<string> keys)
    {
        var list = rows.ToList();
        list.Sort((a, b) =>
        {
            foreach (string key in keys)
            {
                int c = key switch
                {
                    "total" => b.TotalNs.CompareTo(a.TotalNs),
                    "self" => b.SelfNs.CompareTo(a.SelfNs),
                    "call" => b.Calls.CompareTo(a.Calls),
                    "avg" => b.AvgNs.CompareTo(a.AvgNs),
                    "min" => b.MinNs.CompareTo(a.MinNs),
                    "max" => b.MaxNs.CompareTo(a.MaxNs),
                    _ => string.CompareOrdinal(a.Function, b.Function),
                };
                if (c != 0)
                {
                    return c;
                }
            }
            int byName = string.CompareOrdinal(a.Function, b.Function);
            return byName != 0 ? byName : string.CompareOrdinal(a.Module, b.Module);
        });
        return list;
    }

    /// <summary>uftrace report's columns, times in uftrace's units; a name in two modules gets @module.</summary>
    public static void WriteText(TextWriter w, IReadOnlyList<ReportRow> rows)
    {
        w.Write("  Total time   Self time       Calls   Avg total   Min total   Max total  Function\n");
        w.Write("  ==========  ==========  ==========  ==========  ==========  ==========  ====================\n");
        HashSet<string> shared = rows.GroupBy(r => r.Function).Where(g => g.Count() > 1).Select(g => g.Key).ToHashSet();
        var line = new StringBuilder(128);
        foreach (ReportRow r in rows)
        {
            line.Clear();
            line.Append("  ").Append(TimeUnits.Format(r.TotalNs))
                .Append("  ").Append(TimeUnits.Format(r.SelfNs))
                .Append("  ").Append(r.Calls.ToString(CultureInfo.InvariantCulture).PadLeft(10))
                .Append("  ").Append(TimeUnits.Format(r.AvgNs))
                .Append("  ").Append(TimeUnits.Format(r.MinNs))
                .Append("  ").Append(TimeUnits.Format(r.MaxNs))
                .Append("  ").Append(r.Function);
            if (shared.Contains(r.Function))
            {
                line.Append('@').Append(Path.GetFileName(r.Module));
            }
            w.Write(line.Append('\n'));
        }
    }

    /// <summary>RFC 4180 CSV, times in ns (names of C++ functions contain commas: they are quoted).</summary>
    public static void WriteCsv(TextWriter w, IEnumerable<ReportRow> rows)
    {
        w.Write("total_ns,self_ns,calls,avg_ns,min_ns,max_ns,function,module\n");
        foreach (ReportRow r in rows)
        {
            w.Write(string.Create(CultureInfo.InvariantCulture, $"{r.TotalNs},{r.SelfNs},{r.Calls},{r.AvgNs},{r.MinNs},{r.MaxNs},{Csv(r.Function)},{Csv(r.Module)}\n"));
        }
    }

    private static string Csv(string field)
        => field.AsSpan().IndexOfAny(",\"\r\n") < 0 ? field : "\"" + field.Replace("\"", "\"\"") + "\"";
}
