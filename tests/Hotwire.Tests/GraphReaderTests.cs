using System.Globalization;
using System.Text.Json;
using System.Xml.Linq;
using Hotwire.Output;
using Hotwire.Tracing;

namespace Hotwire.Tests;

/// <summary>
/// The readers of function_graph and profile recordings (replay, report, graph, dump) on recordings
/// built by hand, whose calls are known: nesting, recursion, two threads, frames left by longjmp or
/// an exception, a lost exit, a call still running at the end.
/// </summary>
public sealed class GraphReaderTests : IDisposable
{
    private const int App = 101, Worker = 102;
    private const string PushBack = "std::vector<int>::push_back(int&&)";
    private const string Shift = "operator<< <char, std::char_traits<char> >";

    private readonly List<string> _dirs = [];

    public void Dispose()
    {
        foreach (string dir in _dirs.Where(Directory.Exists))
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    // ---- reconstruction

    [Fact]
    public void Reconstruction_finds_every_call_with_its_end_and_skips_the_exit_whose_entry_was_lost()
    {
        Recording r = Sample();
        var sink = new CallCollector();
        var graph = new CallGraph(r.Info(), null, sink);
        foreach ((int tid, List<RawEvent> events) in r.Ordered())
        {
            graph.Feed(tid, events.ToArray());
        }
        graph.Finish();

        Assert.Equal(r.Calls.Select(c => (c.Tid, c.Function, c.Start, c.End, c.How)).OrderBy(c => c),
            sink.Calls.Select(c => (c.Tid, r.Functions[c.Site], c.Start, c.End, c.How)).OrderBy(c => c));
        Assert.Equal(1, graph.UnmatchedExits);
        Assert.Equal(r.Calls.Count(c => c.How == FrameEnd.Unwound), graph.Unwound);
        Assert.Equal(1, graph.Unfinished);
    }

    [Fact]
    public void An_exit_below_the_top_of_the_stack_unwinds_the_frames_above_it()
    {
        var sink = new CallCollector();
        var graph = new CallGraph(new TraceInfo { Tracer = Tracers.FunctionGraph, Clock = new ClockInfo { EndTsc = 100 } }, null, sink);
        graph.Feed(1, [Entry(10, 0, 0), Entry(20, 1, 1), Entry(30, 2, 2), Exit(40, 0, 0), Exit(50, 5, 0)]);
        graph.Finish();
        Assert.Equal([(2, 30UL, 40UL, FrameEnd.Unwound), (1, 20UL, 40UL, FrameEnd.Unwound), (0, 10UL, 40UL, FrameEnd.Returned)],
            sink.Calls.Select(c => (c.Site, c.Start, c.End, c.How)));
        Assert.Equal(1, graph.UnmatchedExits);
    }

    /// <summary>Entries and exits with their stack slots (format 4): sites 0 main, 1 outer/run, 2 jump1/resume, 3 jump2/coroutine, 4 after/leaf.</summary>
    private static RawEvent In(ulong tsc, int site, int depth, ulong slot) => new(tsc, 0, site, [], (ulong)depth * 4, slot);

    private static RawEvent Out(ulong tsc, int site, int depth, ulong slot) => new(tsc, 0, site, [], (ulong)depth * 4 + RawEvent.Exit, slot);

    /// <summary>Calls as (site, caller's site, start, end, how they ended), in the order they ended.</summary>
    private sealed class TreeCollector : IFrameSink
    {
        private readonly Dictionary<int, int> _callerSite = [];

        public List<(int Site, int Caller, ulong Start, ulong End, FrameEnd How)> Calls { get; } = [];

        public void Enter(ThreadFrames thread, int frame)
            => _callerSite[frame] = thread.Parent(frame) is int p and >= 0 ? thread[p].Site : -1;

        public void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value)
            => Calls.Add((thread[frame].Site, _callerSite[frame], thread[frame].EntryTsc, exitTsc, end));
    }

    [Fact]
    public void Frames_an_entry_lands_above_are_gone_when_a_frame_below_them_returns()
    {
        // longjmp from jump2 back into outer, which then calls after at a new slot (850, above
        // jump1's 800): gone or a stack above them? outer's return (below them) says gone.
        var sink = new TreeCollector();
        var graph = new CallGraph(new TraceInfo { Tracer = Tracers.FunctionGraph, Clock = new ClockInfo { EndTsc = 100 } }, null, sink);
        graph.Feed(1, [In(10, 0, 0, 1000), In(20, 1, 1, 900), In(30, 2, 2, 800), In(40, 3, 3, 700), In(50, 4, 2, 850)]);
        Assert.Empty(sink.Calls);   // held back: not known yet
        graph.Feed(1, [Out(60, 4, 2, 850), Out(70, 1, 1, 900), Out(80, 0, 0, 1000)]);
        graph.Finish();
        Assert.Equal([(3, 2, 40UL, 50UL, FrameEnd.Unwound), (2, 1, 30UL, 50UL, FrameEnd.Unwound), (4, 1, 50UL, 60UL, FrameEnd.Returned),
            (1, 0, 20UL, 70UL, FrameEnd.Returned), (0, -1, 10UL, 80UL, FrameEnd.Returned)], sink.Calls);
        Assert.Equal(0, graph.Switches);
    }

    [Fact]
    public void Frames_an_entry_lands_above_are_suspended_when_one_of_them_returns_later()
    {
        // A coroutine stack inside main's frame (slots 950..940, above run's and resume's): resume
        // returns after the coroutine yields, so they were alive; the coroutine is resume's callee.
        var sink = new TreeCollector();
        var graph = new CallGraph(new TraceInfo { Tracer = Tracers.FunctionGraph, Clock = new ClockInfo { EndTsc = 200 } }, null, sink);
        graph.Feed(1, [In(10, 0, 0, 1000), In(20, 1, 1, 900), In(30, 2, 2, 800), In(40, 3, 1, 950), In(45, 4, 2, 940), Out(46, 4, 2, 940)]);
        graph.Feed(1, [Out(50, 2, 2, 800), In(60, 2, 2, 800), Out(70, 3, 1, 950), Out(80, 2, 3, 800), Out(90, 1, 1, 900), Out(100, 0, 0, 1000)]);
        graph.Finish();
        Assert.Equal([(4, 3, 45UL, 46UL, FrameEnd.Returned), (2, 1, 30UL, 50UL, FrameEnd.Returned), (3, 2, 40UL, 70UL, FrameEnd.Returned),
            (2, 1, 60UL, 80UL, FrameEnd.Returned), (1, 0, 20UL, 90UL, FrameEnd.Returned), (0, -1, 10UL, 100UL, FrameEnd.Returned)], sink.Calls);
        Assert.Equal(0, graph.Unwound);
        Assert.Equal(4, graph.Switches);  // to the coroutine, back, into it again, back when it ends
    }

    [Fact]
    public void A_loss_mark_leaves_out_the_frames_open_across_it_and_hangs_later_calls_under_lost_callers()
    {
        const int Main = 0, Pa = 1, Pb = 2, Leaf = 3, Qb = 4, Qa = 5;
        // main -> pa -> pb -> leaf; then 5 events lost (pb, pa return; qa is entered); qb -> leaf
        // under the unknown qa; an exit of qa whose entry was lost; main returns; 2 more events lost after the end.
        var info = new TraceInfo
        {
            Tracer = Tracers.FunctionGraph,
            Clock = new ClockInfo { EndTsc = 1000 },
            Threads = [new ThreadInfo { Tid = 1, Lost = 5 + 2 }],
            Sites = [.. new[] { "main", "pa", "pb", "leaf", "qb", "qa" }.Select((f, i) => new SiteInfo { Index = i, Function = f })],
        };
        var calls = new CallCollector();
        var tree = new CallTree();
        var report = new ReportBuilder(info);
        var graph = new CallGraph(info, null, new Tee(calls, tree, report));
        graph.Feed(1, [Entry(10, Main, 0), Entry(20, Pa, 1), Entry(30, Pb, 2), Entry(40, Leaf, 3), Exit(50, Leaf, 3),
            Lost(Entry(100, Qb, 2), 5), Entry(110, Leaf, 3), Exit(120, Leaf, 3), Exit(130, Qb, 2), Exit(140, Qa, 1), Exit(200, Main, 0),
            Entry(300, Main, 0)]);
        graph.Finish();

        Assert.Equal(
            [(Leaf, 40UL, 50UL, FrameEnd.Returned), (Pb, 30UL, 100UL, FrameEnd.Lost), (Leaf, 110UL, 120UL, FrameEnd.Returned), (Qb, 100UL, 130UL, FrameEnd.Returned),
             (Pa, 20UL, 200UL, FrameEnd.Lost), (Main, 10UL, 200UL, FrameEnd.Lost), (Main, 300UL, 1000UL, FrameEnd.Lost)],
            calls.Calls.Select(c => (c.Site, c.Start, c.End, c.How)));
        Assert.Equal(4, graph.Straddling);      // main, pa, pb across the first loss; main again across the last
        Assert.Equal(1, graph.CallerLost);      // qb
        Assert.Equal(2, graph.LossMarks);
        Assert.Equal(1, graph.UnmatchedExits);  // qa's
        Assert.Equal(0, graph.Unwound + graph.Unfinished);

        // report: the complete calls only.
        Assert.Equal([("leaf", 2L, 20L), ("qb", 1L, 30L)], report.Rows().Select(row => (row.Function, row.Calls, row.TotalNs)).Order());

        // call paths: leaf under main -> pa -> pb (main, pa and pb themselves counted nowhere); qb under [lost events], not under pa.
        var names = new SiteNames(info);
        CallTree shown = tree.WithoutEmptyPaths();
        var paths = Enumerable.Range(1, shown.Count - 1).ToDictionary(n => string.Join(";", shown.Path(n).Select(names.Function)), n => (shown.Calls(n), shown.TotalTicks(n)));
        Assert.Equal(new Dictionary<string, (long, ulong)>
        {
            ["main"] = (0, 0), ["main;pa"] = (0, 0), ["main;pa;pb"] = (0, 0), ["main;pa;pb;leaf"] = (1, 10),
            ["[lost events]"] = (1, 30), ["[lost events];qb"] = (1, 30), ["[lost events];qb;leaf"] = (1, 10),
        }, paths);
        Assert.Equal(30UL, shown.TotalTicks(CallTree.Root));                // measured outermost calls: qb's
        Assert.Equal(10UL + 30, shown.InclusiveTicks()[CallTree.Root]);     // what a flame graph is as wide as
    }

    [Fact]
    public void Replay_marks_where_events_were_lost_and_gives_no_duration_to_the_calls_across_it()
    {
        var r = new Recording();
        r.Entry(App, 1000, "main", 0);
        r.Entry(App, 1100, "work", 1);
        r.Entry(App, 1500, "leaf", 2);
        r.Exit(App, 1600, "leaf", 2);
        r.Exit(App, 1700, "work", 1);
        r.Exit(App, 2000, "main", 0);
        r.LoseBefore(App, 1500, 3);
        string dir = r.Write(this);
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        Assert.Equal(["main() {", "  work() {", "/* lost 3 events: the calls open here are left out */", "    leaf();", "  } /* work lost */", "} /* main lost */"],
            ThreadLines(replay, "app-101").Select(FunctionColumn));
        Assert.Contains(" |   0.100 us    |      leaf();", replay.Stdout);
        Assert.Contains(" |               |  } /* main lost */", replay.Stdout);
        Assert.Contains("# 2 calls were left out: their thread lost events while they ran (1 places)", replay.Stdout);
        CliResult report = HotwireCli.Run("report", "-d", dir, "--format", "csv");
        Assert.Equal(["100,100,1,100,100,100,leaf,/usr/bin/app"], report.Lines.Skip(1));
        Assert.Contains("2 calls were left out", report.Stderr);
    }

    // ---- replay

    [Fact]
    public void Replay_prints_ftrace_function_graph_leaves_braces_and_durations()
    {
        string dir = Sample().Write(this);
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        Assert.StartsWith("# tracer: function_graph\n#\n# entries-in-buffer/entries-written: ", replay.Stdout);
        Assert.Contains("DURATION                  FUNCTION CALLS", replay.Stdout);

        string[] app = ThreadLines(replay, "app-101");
        Assert.Equal(
        [
            "main() {",
            "  foo() {",
            "    bar();",
            "  }",
            "  fact() {",
            "    fact() {",
            "      fact();",
            "    }",
            "  }",
            "  jumper() {",
            "    deep(); /* unwound */",
            "  } /* jumper unwound */",
            "  leaf();",
            "  thrower(); /* unwound */",
            "}",
        ], app.Select(FunctionColumn));
        Assert.Equal(app.Count(l => l.EndsWith('{')), app.Count(l => FunctionColumn(l).TrimStart().StartsWith('}')));
        Assert.Contains(" |   0.100 us    |      bar();", app[2]);
        Assert.Contains(" |   0.300 us    |    }", app[3]);
        Assert.Contains(" |               |  main() {", app[0]);
        Assert.Contains(" |   2.000 us    |  }", app[^1]);

        string[] worker = ThreadLines(replay, "worker-102");
        Assert.Contains(worker, l => l.EndsWith($"{Shift}();"));
        Assert.Contains(worker, l => l.EndsWith($"  {PushBack} {{")); // a demangled name keeps its own parameter list
        Assert.Contains(worker, l => l.EndsWith("work(); /* unfinished */") && l.Contains("  1.000 us"));
        Assert.Contains("# 1 exits whose entry is not in the recording were skipped", replay.Stdout);
        Assert.Contains("# 1 calls were still running when the recording ended", replay.Stdout);
    }

    [Fact]
    public void Replay_merges_threads_by_time_whatever_the_order_of_their_chunks()
    {
        // The worker's chunks all come first in events.bin, in chunks of 2 events.
        string dir = Sample().Write(this, chunk: 2, workerFirst: true);
        CliResult json = HotwireCli.Run("replay", "-d", dir, "--format", "json");
        Assert.True(json.ExitCode == 0, json.Stderr);
        using JsonDocument doc = JsonDocument.Parse(json.Stdout);
        Assert.Equal("function_graph", doc.RootElement.GetProperty("tracer").GetString());
        var events = doc.RootElement.GetProperty("events").EnumerateArray().ToList();
        long[] times = events.Select(e => e.GetProperty("timestampNs").GetInt64()).ToArray();
        Assert.Equal(times.Order(), times);
        Recording r = Sample();
        Assert.Equal(r.Calls.Count, events.Count(e => e.GetProperty("type").GetString() == "entry"));
        Assert.Equal(r.Calls.Count, events.Count(e => e.GetProperty("type").GetString() == "exit"));
        Assert.Equal(1, doc.RootElement.GetProperty("unmatchedExits").GetInt64());
        JsonElement jumper = events.Single(e => e.GetProperty("type").GetString() == "exit" && e.GetProperty("function").GetString() == "jumper");
        Assert.Equal("unwound", jumper.GetProperty("end").GetString());
        Assert.Equal(200, jumper.GetProperty("durationNs").GetInt64());

        // The text replay of the same file is in time order too, both threads interleaved.
        CliResult text = HotwireCli.Run("replay", "-d", dir);
        string[] lines = text.Lines.Where(l => !l.StartsWith('#')).ToArray();
        Assert.Equal(["app-101", "worker-102", "app-101", "worker-102"], lines.Take(4).Select(l => l[..16].Trim()));
    }

    [Fact]
    public void Replay_in_uftrace_layout_and_with_return_values()
    {
        string dir = Sample().Write(this, retval: true);
        CliResult uftrace = HotwireCli.Run("replay", "-d", dir, "--format", "uftrace", "--tid", App.ToString(CultureInfo.InvariantCulture));
        Assert.True(uftrace.ExitCode == 0, uftrace.Stderr);
        Assert.Contains("# DURATION     TID     FUNCTION\n", uftrace.Stdout);
        Assert.Contains("\n            [   101] | main() {\n", uftrace.Stdout);
        Assert.Contains("\n   0.100 us [   101] |     bar() = 42;\n", uftrace.Stdout);
        Assert.Contains("\n   0.300 us [   101] |   } = 1; /* foo */\n", uftrace.Stdout);
        Assert.Contains("\n   0.200 us [   101] |   } /* jumper (unwound) */\n", uftrace.Stdout);
        Assert.DoesNotContain("[   102]", uftrace.Stdout);

        CliResult ftrace = HotwireCli.Run("replay", "-d", dir);
        Assert.Contains("|      bar(); /* = 0x2a */\n", ftrace.Stdout);
        Assert.Contains("|    } /* foo = 0x1 */\n", ftrace.Stdout);
        Assert.Contains("|  } /* main = 0x0 */\n", ftrace.Stdout);
        Assert.Contains("|    } /* jumper unwound */\n", ftrace.Stdout);
    }

    [Fact]
    public void Durations_carry_ftrace_overhead_marks_and_uftrace_units()
    {
        Assert.Equal("  0.318 us    ", GraphReplayWriter.FtraceDuration(318));
        Assert.Equal("+ 15.000 us   ", GraphReplayWriter.FtraceDuration(15_000));
        Assert.Equal("! 100.001 us  ", GraphReplayWriter.FtraceDuration(100_001));
        Assert.Equal("# 1234.567 us ", GraphReplayWriter.FtraceDuration(1_234_567));
        Assert.Equal("* 12345.67 us ", GraphReplayWriter.FtraceDuration(12_345_678));
        Assert.Equal("@ 123456.7 us ", GraphReplayWriter.FtraceDuration(123_456_789));
        Assert.Equal("$ 1234567 us  ", GraphReplayWriter.FtraceDuration(1_234_567_890));
        Assert.Equal("-5", GraphReplayWriter.KernelRetval(unchecked((ulong)-5L)));
        Assert.Equal("0x2a", GraphReplayWriter.KernelRetval(42));
        Assert.Equal("  0.318 us", TimeUnits.Format(318));
        Assert.Equal(" 10.293 ms", TimeUnits.Format(10_293_000));
        Assert.Equal("  2.500  s", TimeUnits.Format(2_500_000_000));
        Assert.Equal("999.999 us", TimeUnits.Format(999_999));
    }

    // ---- report

    [Fact]
    public void Report_totals_are_the_sums_of_call_durations_and_self_is_total_minus_callees()
    {
        Recording r = Sample();
        string dir = r.Write(this);
        CliResult csv = HotwireCli.Run("report", "-d", dir, "--format", "csv");
        Assert.True(csv.ExitCode == 0, csv.Stderr);
        Assert.Contains("1 exits whose entry is not in the recording were skipped", csv.Stderr);
        Dictionary<string, string[]> rows = ParseCsv(csv.Stdout).Skip(1).ToDictionary(f => f[6]);
        Assert.Equal(r.Calls.Select(c => c.Function).Distinct().Order(), rows.Keys.Order());
        foreach (var byFunction in r.Calls.GroupBy(c => c.Function))
        {
            string[] row = rows[byFunction.Key];
            long total = byFunction.Sum(c => c.Duration);
            long self = byFunction.Sum(c => c.Duration - r.Calls.Where(k => ReferenceEquals(k.Parent, c)).Sum(k => k.Duration));
            Assert.Equal(total, long.Parse(row[0], CultureInfo.InvariantCulture));
            Assert.Equal(self, long.Parse(row[1], CultureInfo.InvariantCulture));
            Assert.Equal(byFunction.Count(), long.Parse(row[2], CultureInfo.InvariantCulture));
            Assert.Equal(total / byFunction.Count(), long.Parse(row[3], CultureInfo.InvariantCulture));
            Assert.Equal(byFunction.Min(c => c.Duration), long.Parse(row[4], CultureInfo.InvariantCulture));
            Assert.Equal(byFunction.Max(c => c.Duration), long.Parse(row[5], CultureInfo.InvariantCulture));
        }
        // A recursive function's nested calls each count: 400 + 200 + 50.
        Assert.Equal("650", rows["fact"][0]);
        Assert.Equal("400", rows["fact"][1]);
    }

    [Fact]
    public void Report_text_sorts_by_the_given_keys_and_keeps_to_the_chosen_threads()
    {
        string dir = Sample().Write(this);
        CliResult text = HotwireCli.Run("report", "-d", dir);
        Assert.True(text.ExitCode == 0, text.Stderr);
        Assert.Equal("  Total time   Self time       Calls   Avg total   Min total   Max total  Function", text.Lines[0]);
        Assert.Equal("    2.000 us    0.900 us           1    2.000 us    2.000 us    2.000 us  main", text.Lines[2]);
        Assert.Equal(["main", "work", "fact", "foo"], text.Lines.Skip(2).Take(4).Select(l => l[74..]));

        CliResult byCalls = HotwireCli.Run("report", "-d", dir, "-s", "call,func", "--tid", Worker.ToString(CultureInfo.InvariantCulture));
        Assert.True(byCalls.ExitCode == 0, byCalls.Stderr);
        Assert.Equal(["work", "bar", "foo", "inner", Shift, "outer", PushBack], byCalls.Lines.Skip(2).Select(l => l[74..]));
        Assert.Contains(byCalls.Lines, l => l.StartsWith("    1.450 us    1.220 us           2", StringComparison.Ordinal));
    }

    [Fact]
    public void Report_of_a_profile_recording_sums_the_chosen_threads()
    {
        var r = new Recording();
        r.Site("main");
        r.Site("foo");
        TraceInfo info = r.Info(Tracers.Profile);
        info.Profile =
        [
            new ProfileEntry { Site = r.Site("main"), Tid = App, Calls = 1, TotalNs = 5000, SelfNs = 1000, MinNs = 5000, MaxNs = 5000 },
            new ProfileEntry { Site = r.Site("foo"), Tid = App, Calls = 3, TotalNs = 3000, SelfNs = 3000, MinNs = 500, MaxNs = 2000 },
            new ProfileEntry { Site = r.Site("foo"), Tid = Worker, Calls = 2, TotalNs = 800, SelfNs = 600, MinNs = 300, MaxNs = 500 },
        ];
        string dir = r.WriteInfoOnly(this, info);
        CliResult all = HotwireCli.Run("report", "-d", dir, "--format", "csv", "-s", "func");
        Assert.True(all.ExitCode == 0, all.Stderr);
        Assert.Equal("3800,3600,5,760,300,2000,foo,/usr/bin/app", all.Lines[1]);
        Assert.Equal("5000,1000,1,5000,5000,5000,main,/usr/bin/app", all.Lines[2]);
        CliResult worker = HotwireCli.Run("report", "-d", dir, "--format", "csv", "--tid", Worker.ToString(CultureInfo.InvariantCulture));
        Assert.Equal(["800,600,2,400,300,500,foo,/usr/bin/app"], worker.Lines.Skip(1));

        AssertOneLineError(HotwireCli.Run("graph", "-d", dir), 1, "recorded with the profile tracer, which keeps per-function totals but no calls or call tree: record with --tracer function_graph");
        AssertOneLineError(HotwireCli.Run("replay", "-d", dir), 1, "hotwire report");
    }

    [Fact]
    public void Readers_that_need_durations_say_how_to_record_them()
    {
        var r = new Recording();
        r.Entry(App, 100, "main", 0);
        string dir = r.Write(this, tracer: Tracers.Function);
        AssertOneLineError(HotwireCli.Run("report", "-d", dir), 1, "records calls but not their durations: record with --tracer function_graph or --tracer profile");
        AssertOneLineError(HotwireCli.Run("graph", "-d", dir), 1, "record with --tracer function_graph");
        AssertOneLineError(HotwireCli.Run("dump", "--chrome", "-d", dir), 1, "record with --tracer function_graph");
        AssertOneLineError(HotwireCli.Run("replay", "--format", "uftrace", "-d", dir), 1, "--tracer function_graph");
        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        Assert.Contains("# tracer: function\n", replay.Stdout);
    }

    [Fact]
    public void Bad_reader_input_gets_one_clear_line()
    {
        string dir = Sample().Write(this);
        AssertOneLineError(HotwireCli.Run("report", "-d", dir, "-s", "total,speed"), 2, "unknown sort key 'speed'");
        AssertOneLineError(HotwireCli.Run("report", "-d", dir, "--format", "xml"), 2, "--format takes text or csv, not 'xml'");
        AssertOneLineError(HotwireCli.Run("replay", "-d", dir, "--format", "xml"), 2, "--format takes text, uftrace or json");
        AssertOneLineError(HotwireCli.Run("dump", "-d", dir, "--chrome", "--flame-graph"), 2, "give one of --chrome, --flame-graph and --svg FILE");
        AssertOneLineError(HotwireCli.Run("report", "-d", dir, "--tid", "999"), 1, "--tid: no such thread");
        AssertOneLineError(HotwireCli.Run("graph", "-d", "/no/such/dir"), 1, "/no/such/dir: no such data directory");

        var empty = new Recording();
        string none = empty.Write(this);
        AssertOneLineError(HotwireCli.Run("report", "-d", none), 1, "holds no calls");
        AssertOneLineError(HotwireCli.Run("dump", "--chrome", "-d", none), 1, "holds no calls");

        string events = Path.Combine(dir, TraceData.EventsFile);
        byte[] bytes = File.ReadAllBytes(events);
        File.WriteAllBytes(events, [.. bytes[..16].Select(b => (byte)~b), .. bytes[16..]]);
        AssertOneLineError(HotwireCli.Run("report", "-d", dir), 1, "is damaged at byte 0");
        AssertOneLineError(HotwireCli.Run("graph", "-d", dir), 1, "is damaged at byte 0");
    }

    // ---- graph

    [Fact]
    public void Graph_aggregates_calls_by_path_across_threads()
    {
        string dir = Sample().Write(this);
        CliResult graph = HotwireCli.Run("graph", "-d", dir);
        Assert.True(graph.ExitCode == 0, graph.Stderr);
        Assert.Contains("========== FUNCTION CALL GRAPH ==========\n# TOTAL TIME   FUNCTION\n", graph.Stdout);
        List<(int Level, long Calls, string Name, string Time)> nodes = ParseGraph(graph.Stdout);
        Assert.Equal((0, 1L, "app", "    3.650 us"), nodes[0]); // the outermost calls: main 2000, work 450 + 1000, outer 200
        Assert.Equal((1, 1L, "main"), (nodes[1].Level, nodes[1].Calls, nodes[1].Name));
        Assert.Equal((1, 2L, "work", "    1.450 us"), nodes.Single(n => n.Name == "work"));
        // uftrace indents only under a function with several callees: fact's chain stays at main's children's level.
        Assert.Equal([(2, 1L), (2, 1L), (2, 1L)], nodes.Where(n => n.Name == "fact").Select(n => (n.Level, n.Calls)));
        Assert.Equal(2, nodes.Count(n => n.Name == "foo")); // main → foo and work → foo are different paths
        Assert.Contains("  2.000 us :  +-(1) main\n", graph.Stdout);
        Assert.Contains("  0.300 us :  |  +-(1) foo\n", graph.Stdout);
    }

    [Fact]
    public void Graph_of_a_function_merges_its_calls_and_lists_the_paths_to_it()
    {
        string dir = Sample().Write(this);
        CliResult foo = HotwireCli.Run("graph", "-d", dir, "foo");
        Assert.True(foo.ExitCode == 0, foo.Stderr);
        Assert.Contains("=============== BACKTRACE ===============\n", foo.Stdout);
        Assert.Contains(" backtrace #0: hit 1, time   0.300 us\n   [0] main (0x1000)\n   [1] foo (0x1010)\n", foo.Stdout);
        Assert.Contains(" backtrace #1: hit 1, time   0.100 us\n   [0] work (0x1090)\n   [1] foo (0x1010)\n", foo.Stdout);
        List<(int Level, long Calls, string Name, string Time)> nodes = ParseGraph(foo.Stdout);
        Assert.Equal([(0, 2L, "foo", "    0.400 us"), (0, 1L, "bar", "    0.100 us")], nodes);

        CliResult fact = HotwireCli.Run("graph", "-d", dir, "fact");
        Assert.Equal([(0, 1L, "fact"), (0, 1L, "fact"), (0, 1L, "fact")], ParseGraph(fact.Stdout).Select(n => (n.Level, n.Calls, n.Name)));

        AssertOneLineError(HotwireCli.Run("graph", "-d", dir, "fo"), 1, "'fo' was never called in");
        AssertOneLineError(HotwireCli.Run("graph", "-d", dir, "fo"), 1, "near names: foo");
        AssertOneLineError(HotwireCli.Run("graph", "-d", dir, "lostexit"), 1, "hotwire report -d");
    }

    // ---- dump

    [Fact]
    public void Chrome_trace_has_one_complete_event_per_call_in_microseconds()
    {
        Recording r = Sample();
        string dir = r.Write(this);
        string file = Path.Combine(dir, "trace.json");
        CliResult dump = HotwireCli.Run("dump", "--chrome", "-d", dir, "-o", file);
        Assert.True(dump.ExitCode == 0, dump.Stderr);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(file));
        var events = doc.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        var complete = events.Where(e => e.GetProperty("ph").GetString() == "X")
            .Select(e => (Tid: e.GetProperty("tid").GetInt32(), Name: e.GetProperty("name").GetString()!,
                Start: (long)Math.Round(e.GetProperty("ts").GetDouble() * 1000), End: (long)Math.Round((e.GetProperty("ts").GetDouble() + e.GetProperty("dur").GetDouble()) * 1000)))
            .ToList();
        Assert.Equal(r.Calls.Select(c => (c.Tid, c.Function, (long)c.Start, (long)c.End)).Order(), complete.Select(c => (c.Tid, c.Name, c.Start, c.End)).Order());
        Assert.All(events.Where(e => e.GetProperty("ph").GetString() == "X"), e => Assert.Equal(1000, e.GetProperty("pid").GetInt32()));
        Assert.Equal(["app", "worker"], events.Where(e => e.GetProperty("name").GetString() == "thread_name")
            .Select(e => e.GetProperty("args").GetProperty("name").GetString()!).Order());
        Assert.Contains(events, e => e.GetProperty("name").GetString() == "jumper" && e.GetProperty("args").GetProperty("end").GetString() == "unwound");
    }

    [Fact]
    public void Folded_stacks_hold_self_time_per_distinct_stack()
    {
        Recording r = Sample();
        string dir = r.Write(this);
        CliResult folded = HotwireCli.Run("dump", "--flame-graph", "-d", dir);
        Assert.True(folded.ExitCode == 0, folded.Stderr);
        Dictionary<string, long> stacks = folded.Lines.ToDictionary(l => l[..l.LastIndexOf(' ')], l => long.Parse(l[(l.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture));
        Assert.Equal(100, stacks["main;foo;bar"]);
        Assert.Equal(200, stacks["main;foo"]);
        Assert.Equal(50, stacks["main;fact;fact;fact"]);
        Assert.Equal(1000 + 450 - 100 - 100 - 30, stacks["work"]); // both calls of work, merged
        Assert.Equal(10, stacks[$"work;{PushBack};{Shift}"]);
        Assert.Equal(r.Calls.Where(c => c.Parent is null).Sum(c => c.Duration), stacks.Values.Sum());
    }

    [Fact]
    public void Svg_flame_graph_is_well_formed_with_a_frame_per_call_path()
    {
        string dir = Sample().Write(this);
        string file = Path.Combine(dir, "flame.svg");
        CliResult dump = HotwireCli.Run("dump", "--svg", file, "-d", dir);
        Assert.True(dump.ExitCode == 0, dump.Stderr);
        XDocument svg = XDocument.Parse(File.ReadAllText(file));
        XNamespace ns = "http://www.w3.org/2000/svg";
        var frames = svg.Descendants(ns + "g").Where(g => (string?)g.Attribute("class") == "f").ToList();
        // "all", then one per distinct call path: 10 in app, 7 in worker.
        Assert.Equal(18, frames.Count);
        Assert.All(frames, g => Assert.Single(g.Elements(ns + "rect")));
        Assert.Contains(frames, g => g.Element(ns + "title")!.Value.StartsWith($"{Shift} (1 call, total", StringComparison.Ordinal));
        Assert.Contains(frames, g => (string?)g.Attribute("data-name") == PushBack);
        XElement all = frames[0].Element(ns + "rect")!;
        Assert.Equal(1180, double.Parse((string)all.Attribute("width")!, CultureInfo.InvariantCulture), 3);
        Assert.Contains("function zoomTo", svg.Descendants(ns + "script").Single().Value);
    }

    // ---- helpers

    /// <summary>Two threads whose calls cover the cases reconstruction must get right.</summary>
    private static Recording Sample()
    {
        var r = new Recording();
        // app: nesting, recursion, a longjmp out of two frames, a lost exit, an exception.
        Call main = r.Call(App, "main", 1000, 3000, 0, null, FrameEnd.Returned);
        Call foo = r.Call(App, "foo", 1100, 1400, 1, main, FrameEnd.Returned, 1);
        r.Call(App, "bar", 1200, 1300, 2, foo, FrameEnd.Returned, 42);
        Call fact1 = r.Call(App, "fact", 1500, 1900, 1, main, FrameEnd.Returned, 6);
        Call fact2 = r.Call(App, "fact", 1600, 1800, 2, fact1, FrameEnd.Returned, 2);
        r.Call(App, "fact", 1700, 1750, 3, fact2, FrameEnd.Returned, 1);
        Call jumper = r.Call(App, "jumper", 2000, 2200, 1, main, FrameEnd.Unwound);
        r.Call(App, "deep", 2100, 2200, 2, jumper, FrameEnd.Unwound);
        r.Call(App, "leaf", 2200, 2300, 1, main, FrameEnd.Returned);
        r.Exit(App, 2400, "lostexit", 1); // its entry was lost
        r.Call(App, "thrower", 2500, 2600, 1, main, FrameEnd.Unwound, kind: RawEvent.Unwound);

        // worker: a C++ name, an exit whose callee's exit was lost, a call still running at the end.
        Call work = r.Call(Worker, "work", 1050, 1500, 0, null, FrameEnd.Returned);
        r.Call(Worker, "foo", 1150, 1250, 1, work, FrameEnd.Returned);
        r.Call(Worker, "bar", 1350, 1450, 1, work, FrameEnd.Returned);
        Call push = r.Call(Worker, PushBack, 1460, 1490, 1, work, FrameEnd.Returned);
        r.Call(Worker, Shift, 1470, 1480, 2, push, FrameEnd.Returned);
        Call outer = r.Call(Worker, "outer", 5000, 5200, 0, null, FrameEnd.Returned);
        r.Call(Worker, "inner", 5100, 5200, 1, outer, FrameEnd.Unwound);
        r.Call(Worker, "work", 9000, Recording.EndTsc, 0, null, FrameEnd.Unfinished);
        return r;
    }

    private static RawEvent Entry(ulong tsc, int site, int depth) => new(tsc, 0, site, [], (ulong)depth * 4);

    private static RawEvent Exit(ulong tsc, int site, int depth) => new(tsc, 0, site, [], (ulong)depth * 4 + RawEvent.Exit);

    /// <summary>The event with a loss mark: <paramref name="events"/> of its thread were lost just before it.</summary>
    private static RawEvent Lost(RawEvent e, ulong events) => e with { Info = e.Info | events << 32 };

    /// <summary>Several sinks fed by one reconstruction.</summary>
    private sealed class Tee(params IFrameSink[] sinks) : IFrameSink
    {
        public void Enter(ThreadFrames thread, int frame) => Array.ForEach(sinks, s => s.Enter(thread, frame));

        public void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value) => Array.ForEach(sinks, s => s.Exit(thread, frame, exitTsc, end, value));
    }

    private static string[] ThreadLines(CliResult replay, string task)
        => replay.Lines.Where(l => !l.StartsWith('#') && l[..16].Trim() == task).ToArray();

    /// <summary>The FUNCTION CALLS column of an ftrace line, indentation kept (it starts two spaces after the duration's '|').</summary>
    private static string FunctionColumn(string line) => line[(line.IndexOf('|', 18) + 3)..];

    private static List<(int Level, long Calls, string Name, string Time)> ParseGraph(string text)
    {
        string body = text[(text.IndexOf("# TOTAL TIME   FUNCTION\n", StringComparison.Ordinal) + 24)..];
        var nodes = new List<(int, long, string, string)>();
        foreach (string line in body.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int open = line.IndexOf('(', 15);
            if (open < 0)
            {
                continue; // a separator between siblings
            }
            int close = line.IndexOf(") ", open, StringComparison.Ordinal);
            nodes.Add(((open - 15) / 3, long.Parse(line[(open + 1)..close], CultureInfo.InvariantCulture), line[(close + 2)..], line[..12]));
        }
        return nodes;
    }

    private static IEnumerable<string[]> ParseCsv(string text)
    {
        foreach (string line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var fields = new List<string>();
            var field = new System.Text.StringBuilder();
            bool quoted = false;
            for (int i = 0; i < line.Length; i++)
            {
                char c = line[i];
                if (quoted && c == '"' && i + 1 < line.Length && line[i + 1] == '"')
                {
                    field.Append('"');
                    i++;
                }
                else if (c == '"')
                {
                    quoted = !quoted;
                }
                else if (c == ',' && !quoted)
                {
                    fields.Add(field.ToString());
                    field.Clear();
                }
                else
                {
                    field.Append(c);
                }
            }
            fields.Add(field.ToString());
            yield return fields.ToArray();
        }
    }

    private static void AssertOneLineError(CliResult result, int code, string expected)
    {
        Assert.Equal(code, result.ExitCode);
        Assert.Equal("", result.Stdout);
        string[] lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got: {result.Stderr}");
        Assert.StartsWith("hotwire: ", lines[0]);
        Assert.Contains(expected, lines[0]);
    }

    private string NewDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-graph-test-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        _dirs.Add(dir);
        return dir;
    }

    /// <summary>A call the sample makes, as the readers should find it (times in ns = TSC ticks).</summary>
    private sealed record Call(int Tid, string Function, ulong Start, ulong End, FrameEnd How, Call? Parent)
    {
        public long Duration => (long)(End - Start);
    }

    private sealed class CallCollector : IFrameSink
    {
        public List<(int Tid, int Site, ulong Start, ulong End, FrameEnd How)> Calls { get; } = [];

        public void Enter(ThreadFrames thread, int frame)
        {
        }

        public void Exit(ThreadFrames thread, int frame, ulong exitTsc, FrameEnd end, ulong value)
            => Calls.Add((thread.Tid, thread[frame].Site, thread[frame].EntryTsc, exitTsc, end));
    }

    /// <summary>A recording made by hand: sites, per-thread events, and the calls they stand for.</summary>
    private sealed class Recording
    {
        public const ulong EndTsc = 10_000;

        public List<string> Functions { get; } = [];

        public List<Call> Calls { get; } = [];

        private readonly Dictionary<int, List<(ulong Tsc, RawEvent Event)>> _pending = [];

        public int Site(string function)
        {
            int site = Functions.IndexOf(function);
            if (site < 0)
            {
                Functions.Add(function);
                site = Functions.Count - 1;
            }
            return site;
        }

        public void Entry(int tid, ulong tsc, string function, int depth)
            => Add(tid, new RawEvent(tsc, 0x1000 + (ulong)depth, Site(function), [], (ulong)depth * 4 + RawEvent.Entry));

        public void Exit(int tid, ulong tsc, string function, int depth, ulong value = 0, int kind = RawEvent.Exit)
            => Add(tid, new RawEvent(tsc, value, Site(function), [], (ulong)depth * 4 + (ulong)kind));

        /// <summary>
        /// A call: its entry, and its exit unless it ends otherwise (unwound frames have no exit
        /// event unless <paramref name="kind"/> says the tracer found them late; unfinished ones none).
        /// </summary>
        public Call Call(int tid, string function, ulong start, ulong end, int depth, Call? parent, FrameEnd how, ulong value = 0, int kind = RawEvent.Exit)
        {
            Entry(tid, start, function, depth);
            if (how == FrameEnd.Returned || kind == RawEvent.Unwound)
            {
                Exit(tid, end, function, depth, value, kind);
            }
            var call = new Call(tid, function, start, end, how, parent);
            Calls.Add(call);
            return call;
        }

        private void Add(int tid, RawEvent e)
        {
            if (!_pending.TryGetValue(tid, out var list))
            {
                _pending[tid] = list = [];
            }
            list.Add((e.Tsc, e));
        }

        private readonly Dictionary<(int Tid, ulong Tsc), ulong> _losses = [];

        /// <summary>The thread's event at <paramref name="tsc"/> says that <paramref name="events"/> were lost just before it.</summary>
        public void LoseBefore(int tid, ulong tsc, ulong events) => _losses[(tid, tsc)] = events;

        /// <summary>Events in each thread's order: by time, entries before exits of the same instant only where they were added so.</summary>
        public Dictionary<int, List<RawEvent>> Ordered()
            => _pending.ToDictionary(kv => kv.Key, kv => kv.Value.Select((x, i) => (x, i)).OrderBy(p => p.x.Tsc).ThenBy(p => p.x.Event.IsExit ? 0 : 1).ThenBy(p => p.i)
                .Select(p => _losses.TryGetValue((kv.Key, p.x.Tsc), out ulong lost) ? p.x.Event with { Info = p.x.Event.Info | lost << 32 } : p.x.Event).ToList());

        public TraceInfo Info(string tracer = Tracers.FunctionGraph, bool retval = false)
        {
            var info = new TraceInfo
            {
                Tracer = tracer,
                Pid = 1000,
                Command = "/usr/bin/app --serve",
                Started = new DateTime(2026, 11, 25, 0, 0, 0, DateTimeKind.Utc),
                EventBytes = tracer == Tracers.Function ? 24 : 40,
                Retval = retval,
                // One tick per ns, so that durations in the output are the ticks above.
                Clock = new ClockInfo { StartTsc = 0, StartNs = 0, EndTsc = EndTsc, EndNs = (long)EndTsc },
                Threads =
                [
                    new ThreadInfo { Tid = App, Pid = 1000, Name = "app", Events = Ordered().GetValueOrDefault(App)?.Count ?? 0, Lost = LostIn(App) },
                    new ThreadInfo { Tid = Worker, Pid = 1000, Name = "worker", Events = Ordered().GetValueOrDefault(Worker)?.Count ?? 0, Lost = LostIn(Worker) },
                ],
            };
            for (int i = 0; i < Functions.Count; i++)
            {
                info.Sites.Add(new SiteInfo { Index = i, Function = Functions[i], Module = "/usr/bin/app", Address = 0x1000 + (ulong)i * 0x10 });
            }
            info.Modules.Add(new ModuleInfo { Path = "/usr/bin/app", Start = 0x1000, End = 0x2000 });
            return info;
        }

        private ulong LostIn(int tid) => _losses.Where(l => l.Key.Tid == tid).Aggregate(0UL, (n, l) => n + l.Value);

        public string WriteInfoOnly(GraphReaderTests test, TraceInfo info)
        {
            string dir = test.NewDir();
            TraceData.WriteInfo(dir, info);
            return dir;
        }

        /// <summary>Writes info.json and events.bin: packed chunks of at most <paramref name="chunk"/> events, threads alternating.</summary>
        public string Write(GraphReaderTests test, int chunk = 4096, bool workerFirst = false, bool retval = false, string tracer = Tracers.FunctionGraph)
        {
            string dir = test.NewDir();
            TraceInfo info = Info(tracer, retval);
            bool graph = tracer != Tracers.Function;
            int size = graph ? 40 : 24;
            Dictionary<int, List<RawEvent>> ordered = Ordered();
            var chunks = new List<(int Tid, List<RawEvent> Events)>();
            foreach ((int tid, List<RawEvent> events) in ordered.OrderBy(kv => workerFirst ? -kv.Key : kv.Key))
            {
                chunks.AddRange(events.Chunk(chunk).Select(c => (tid, c.ToList())));
            }
            if (!workerFirst)
            {
                // Interleave the threads' chunks, each thread's in its order.
                chunks = chunks.Select((c, i) => (c, Rank: chunks.Take(i).Count(x => x.Tid == c.Tid))).OrderBy(x => x.Rank).ThenBy(x => x.c.Tid).Select(x => x.c).ToList();
            }
            using var file = File.Create(Path.Combine(dir, TraceData.EventsFile));
            foreach ((int tid, List<RawEvent> events) in chunks)
            {
                byte[] raw = new byte[events.Count * size];
                for (int i = 0; i < events.Count; i++)
                {
                    RawEvent e = events[i];
                    BitConverter.TryWriteBytes(raw.AsSpan(i * size), e.Tsc);
                    BitConverter.TryWriteBytes(raw.AsSpan(i * size + 8), e.Caller);
                    BitConverter.TryWriteBytes(raw.AsSpan(i * size + 16), (ulong)e.Site);
                    if (graph)
                    {
                        BitConverter.TryWriteBytes(raw.AsSpan(i * size + 24), e.Info);
                        BitConverter.TryWriteBytes(raw.AsSpan(i * size + 32), e.Slot);
                    }
                }
                byte[] packed = new byte[EventPacking.MaxPackedBytes(events.Count, 0, graph ? 5 : 3)];
                int length = EventPacking.Pack(raw, events.Count, size, 0, new ulong[8], packed);
                byte[] header = new byte[16];
                BitConverter.TryWriteBytes(header.AsSpan(0), TraceData.PackedChunkMagic);
                BitConverter.TryWriteBytes(header.AsSpan(4), tid);
                BitConverter.TryWriteBytes(header.AsSpan(8), events.Count);
                BitConverter.TryWriteBytes(header.AsSpan(12), length);
                file.Write(header);
                file.Write(packed, 0, length);
            }
            TraceData.WriteInfo(dir, info);
            return dir;
        }
    }
}
