using Hotwire.Tracing;

namespace Hotwire.Tests;

/// <summary>
/// The function_graph and profile tracers on programs whose call trees are known by construction
/// (tests/targets/graph.c, graphxx.cpp): the recorded tree, per thread, must be that tree, and the
/// program must behave and print exactly as it does untraced.
/// </summary>
[Collection("engine")]
public class GraphTracerTests
{
    /// <summary>A call as the events show it: entry, children, and how it ended.</summary>
    private sealed class Call
    {
        public string Name = "";
        public ulong Arg;
        public int Depth;
        public ulong EntryTsc;
        public ulong ExitTsc;
        public bool Returned;       // an exit event came
        public ulong Value;
        public List<Call> Children = [];
        public override string ToString() => Name + (Children.Count == 0 ? "" : "{" + string.Join(",", Children) + "}") + (Returned ? "" : "~");
    }

    private sealed record Recording(TraceInfo Info, Dictionary<int, List<RawEvent>> Events, string Stdout, string Stderr, string Dir)
    {
        public string Name(RawEvent e) => Info.Sites.Single(s => s.Index == e.Site).Function;

        /// <summary>Per thread, the top-level calls (frames left without an exit are marked by ~).</summary>
        public List<Call> Roots(int tid, List<RawEvent>? orphans = null)
        {
            var roots = new List<Call>();
            var stack = new List<Call>();
            foreach (RawEvent e in Events[tid])
            {
                if (!e.IsExit)
                {
                    while (stack.Count > 0 && stack[^1].Depth >= e.Depth)
                    {
                        stack.RemoveAt(stack.Count - 1); // left by longjmp or an exception
                    }
                    // Deeper than what we saw: its callers were entered before this process's record began (a fork child).
                    var call = new Call { Name = Name(e), Arg = e.Args.Length > 0 ? e.Args[0] : 0, Depth = e.Depth, EntryTsc = e.Tsc };
                    (stack.Count == 0 ? roots : stack[^1].Children).Add(call);
                    stack.Add(call);
                    continue;
                }
                while (stack.Count > 0 && stack[^1].Depth > e.Depth)
                {
                    stack.RemoveAt(stack.Count - 1);
                }
                if (stack.Count > 0 && stack[^1].Depth == e.Depth && Name(e) == stack[^1].Name)
                {
                    Call done = stack[^1];
                    done.Returned = true;
                    done.ExitTsc = e.Tsc;
                    done.Value = e.Value;
                    stack.RemoveAt(stack.Count - 1);
                }
                else
                {
                    orphans?.Add(e);  // entered before this process's record began (fork)
                }
            }
            return roots;
        }

        public double Ns(ulong ticks) => Info.Clock.ToCalibration().TicksToNs(ticks);
    }

    private static Recording Record(Flavour flavour, params string[] args)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-graph-{Guid.NewGuid():N}");
        int dash = Array.IndexOf(args, "--");
        string[] options = dash < 0 ? [] : args[..dash];
        string[] program = dash < 0 ? args : args[(dash + 1)..];
        CliResult rec = HotwireCli.Run(["record", "--tracer", "function_graph", "-o", dir, .. options, "--", TargetBuilder.Get(flavour), .. program]);
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        Assert.Contains("the program exited with status 0", rec.Stderr);
        TraceInfo info = TraceData.ReadInfo(dir);
        return new Recording(info, TraceData.ReadEvents(dir, info), rec.Stdout, rec.Stderr, dir);
    }

    private static string Untraced(Flavour flavour, params string[] args)
    {
        var psi = new ProcessStartInfo(TargetBuilder.Get(flavour)) { RedirectStandardOutput = true };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        return output;
    }

    private static int MainTid(Recording r) => r.Info.Pid;

    [Fact]
    public void Each_thread_has_exactly_the_tree_it_made()
    {
        Recording r = Record(Flavour.Graph, "tree");
        Assert.Equal(Untraced(Flavour.Graph, "tree"), r.Stdout);
        Assert.Equal("main{leaf}", string.Join(",", r.Roots(MainTid(r))));
        var workers = r.Events.Keys.Where(t => t != MainTid(r)).ToList();
        Assert.Equal(2, workers.Count);
        foreach (int tid in workers)
        {
            Assert.Equal("worker{a{b{c{leaf}}},a{b{c{leaf}}},a{b{c{leaf}}}}", string.Join(",", r.Roots(tid)));
        }
        Assert.Equal(0UL, r.Info.TotalLost);
    }

    [Fact]
    public void Recursion_nests_with_arguments_return_values_and_consistent_durations()
    {
        Recording r = Record(Flavour.Graph, "--args", "1", "--retval", "--", "fib", "12");
        Assert.Equal("fib(12) = 144\n", r.Stdout);
        Call fib = r.Roots(MainTid(r)).Single().Children.Single();
        int calls = 0;
        void Check(Call c)
        {
            calls++;
            Assert.True(c.Returned);
            long n = (long)c.Arg;
            Assert.Equal(Fib(n), (long)c.Value);                       // --retval
            Assert.Equal(n < 2 ? [] : new ulong[] { (ulong)(n - 1), (ulong)(n - 2) }, c.Children.Select(x => x.Arg));
            Assert.True(c.ExitTsc - c.EntryTsc >= (ulong)c.Children.Sum(x => (long)(x.ExitTsc - x.EntryTsc)), "a parent lasts at least as long as its children");
            c.Children.ForEach(Check);
        }
        Check(fib);
        Assert.Equal(465, calls);
        Assert.True(r.Info.Retval);

        static long Fib(long n) => n < 2 ? n : Fib(n - 1) + Fib(n - 2);
    }

    [Fact]
    public void Ten_thousand_nested_frames_all_return_home()
    {
        Recording r = Record(Flavour.Graph, "deep", "10000");
        Assert.Equal("rec(10000) = 10000\n", r.Stdout);
        List<RawEvent> events = r.Events[MainTid(r)];
        Assert.Equal(2 * (1 + 10001 + 1), events.Count);
        Assert.Equal(10002, events.Max(e => e.Depth));                 // main, rec × 10001, leaf
        Assert.All(r.Roots(MainTid(r)), c => Assert.True(c.Returned));
        Assert.Equal(0UL, r.Info.ShadowOverflow);
    }

    [Fact]
    public void Deeper_than_the_shadow_stack_is_counted_and_shown_never_a_crash()
    {
        Recording r = Record(Flavour.Graph, "deep", "20000");
        Assert.Equal("rec(20000) = 20000\n", r.Stdout);
        Assert.Equal((ulong)(20000 + 3 - GraphTracer.Capacity), r.Info.ShadowOverflow); // main, rec × 20001, leaf
        Assert.Contains("calls were not followed", r.Stderr);
        Assert.Equal(GraphTracer.Capacity - 1, r.Events[MainTid(r)].Max(e => e.Depth));
    }

    [Fact]
    public void Longjmp_leaves_frames_behind_and_the_tree_goes_on_at_the_right_depth()
    {
        Recording r = Record(Flavour.Graph, "longjmp", "1000");
        Assert.Equal(Untraced(Flavour.Graph, "longjmp", "1000"), r.Stdout);
        Call main = r.Roots(MainTid(r)).Single();
        Assert.Equal(1000, main.Children.Count);
        Assert.All(main.Children, outer => Assert.Equal("outer{jump1{jump2{jump3~}~}~,after{leaf}}", outer.ToString()));
        Assert.Equal(0UL, r.Info.ShadowOverflow);
    }

    [Fact]
    public void Cxx_exceptions_thrown_through_traced_frames_are_caught_exactly_as_untraced()
    {
        Recording r = Record(Flavour.GraphCxx, "throw", "6");
        Assert.Equal(Untraced(Flavour.GraphCxx, "throw", "6"), r.Stdout);
        Call main = r.Roots(MainTid(r)).Single();
        Assert.True(main.Returned);
        Assert.Equal(6, main.Children.Count);
        for (int i = 0; i < 6; i++)
        {
            Call catcher = main.Children[i];
            Assert.True(catcher.Returned, $"catcher({i}) returns through the handler again after its catch");
            string expected = i % 2 == 0
                ? "catcher(long){t1(long){t2(long){t3(long){std::__cxx11::to_string(long)}~,Guard::~Guard()}~}~,after(long)}"
                : "catcher(long){t1(long){t2(long){t3(long),Guard::~Guard()}},after(long)}";
            Assert.Equal(expected, catcher.ToString());
        }
        Recording rethrow = Record(Flavour.GraphCxx, "rethrow");
        Assert.Equal(Untraced(Flavour.GraphCxx, "rethrow"), rethrow.Stdout);
        Assert.True(rethrow.Roots(MainTid(rethrow)).Single().Returned);
    }

    [Fact]
    public void Cxx_exceptions_in_a_library_loaded_with_dlopen_with_the_runtime_it_brings_are_caught_exactly_as_untraced()
    {
        // A C program dlopens a C++ library (libstdc++ and libgcc_s come with it) that throws
        // through traced frames. Its GOT slots can only be hooked once the linker has relocated
        // it: Hotwire holds the thread at the library's initialiser for that.
        Recording r = Record(Flavour.DlCxx, "throw", "6");
        Assert.Equal(Untraced(Flavour.DlCxx, "throw", "6"), r.Stdout);
        Call main = r.Roots(MainTid(r)).Single();
        Assert.True(main.Returned);
        static IEnumerable<Call> All(Call c) => c.Children.SelectMany(All).Prepend(c);
        Call[] catchers = All(main).Where(c => c.Name == "catcher(long)").ToArray();
        Assert.True(catchers.Length == 6, main.ToString());
        Assert.All(catchers, c => Assert.True(c.Returned));
        Recording rethrow = Record(Flavour.DlCxx, "rethrow");
        Assert.Equal(Untraced(Flavour.DlCxx, "rethrow"), rethrow.Stdout);

        // Teeth: without the holds, the unwinder meets the return handler and the program ends in std::terminate.
        CliResult bare = HotwireCli.Run(new Dictionary<string, string> { ["HOTWIRE_TEST_NO_HOLDS"] = "1" },
            "record", "--tracer", "function_graph", "-o", Path.Combine(Path.GetTempPath(), $"hotwire-graph-{Guid.NewGuid():N}"), "--", TargetBuilder.Get(Flavour.DlCxx), "throw", "6");
        Assert.Contains("killed by signal 6", bare.Stderr);
    }

    [Fact]
    public void A_tail_call_between_traced_functions_returns_through_both()
    {
        Recording r = Record(Flavour.Graph, "--retval", "--", "tail");
        Assert.Equal("tail 12\n", r.Stdout);                           // Σ leaf(i + 1) = 2 + 4 + 6
        Assert.Equal("main{tail{leaf},tail{leaf},tail{leaf}}", string.Join(",", r.Roots(MainTid(r))));
        Call first = r.Roots(MainTid(r)).Single().Children[0];
        Assert.Equal(2UL, first.Value);                                 // both exits carry leaf's return value
        Assert.Equal(2UL, first.Children.Single().Value);
    }

    [Fact]
    public void A_signal_handler_nests_under_the_function_it_interrupted()
    {
        Recording r = Record(Flavour.Graph, "signal");
        Assert.Equal("work = 2\n", r.Stdout);
        Assert.Equal("main{work{on_signal{leaf},leaf}}", string.Join(",", r.Roots(MainTid(r))));
    }

    [Fact]
    public void A_function_that_sleeps_10_ms_lasts_10_ms()
    {
        Recording r = Record(Flavour.Graph, "sleep");
        Call sleeper = r.Roots(MainTid(r)).Single().Children.Single();
        Assert.Equal("sleeper", sleeper.Name);
        double ms = r.Ns(sleeper.ExitTsc - sleeper.EntryTsc) / 1e6;
        Assert.InRange(ms, 10.0, 60.0);
    }

    [Fact]
    public void Pthread_exit_from_traced_frames_ends_the_thread_and_the_program_goes_on()
    {
        Recording r = Record(Flavour.Graph, "exit");
        Assert.Equal("joined 8\n", r.Stdout);
        int thread = r.Events.Keys.Single(t => t != MainTid(r));
        Assert.Equal("exiter{t1{t2~}~}~", string.Join(",", r.Roots(thread)));
        Assert.Equal("main{leaf}", string.Join(",", r.Roots(MainTid(r))));
    }

    [Fact]
    public void A_fork_child_returns_through_the_frames_it_inherited_and_records_their_exits()
    {
        Recording r = Record(Flavour.Graph, "fork");
        Assert.Equal("forked 6\n", r.Stdout);
        Assert.Equal("main{forker{leaf}}", string.Join(",", r.Roots(MainTid(r))));
        int child = r.Events.Keys.Single(t => t != MainTid(r));
        var orphans = new List<RawEvent>();
        Assert.Equal("leaf", string.Join(",", r.Roots(child, orphans)));
        Assert.Equal(2, r.Events[child].First().Depth);                 // under main and forker, as in the parent
        Assert.Equal(["forker@1", "main@0"], orphans.Select(e => $"{r.Name(e)}@{e.Depth}"));
    }

    [Fact]
    public void Tracing_stops_while_a_hijacked_frame_sleeps_and_its_return_still_goes_home()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Graph), "hold", "12");
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-graph-{Guid.NewGuid():N}");
        CliResult rec = HotwireCli.Run("record", "--tracer", "function_graph", "-F", "nap", "-d", "0.5", "-o", dir, "--pid", target.Pid.ToString());
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        string? line = target.ReadLine(TimeSpan.FromSeconds(20));
        Assert.Equal("held 132", line);                                 // Σ leaf(i) = Σ 2i for i < 12
        target.Process.StandardInput.Close();
        Assert.True(target.Process.WaitForExit(10_000));
        Assert.Equal(0, target.Process.ExitCode);
        TraceInfo info = TraceData.ReadInfo(dir);
        Assert.True(info.TotalEvents >= 1, "nap was entered while tracing");
    }

    [Fact]
    public void On_a_real_recording_report_totals_equal_replay_sums_and_chrome_and_svg_are_well_formed()
    {
        Recording r = Record(Flavour.Graph, "tree");
        string dir = Path.GetDirectoryName(Path.Combine(r.Dir, "x"))!;

        // replay: every call's duration (leaves "f();", closes "} /* f */"), summed per function
        CliResult replay = HotwireCli.Run("replay", "-d", dir, "--format", "uftrace");
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        var sums = new Dictionary<string, double>();
        var counts = new Dictionary<string, int>();
        var slack = new Dictionary<string, double>();
        foreach (string line in replay.Lines.Where(l => !l.StartsWith('#')))
        {
            var m = System.Text.RegularExpressions.Regex.Match(line, @"^\s*([\d.]+) (ns|us|ms|s)\s+\[\s*\d+\] \|\s+(?:(\w+)\(\);|\} /\* (\w+) \*/)");
            if (!m.Success)
            {
                continue;
            }
            double unit = m.Groups[2].Value switch { "ns" => 1, "us" => 1e3, "ms" => 1e6, _ => 1e9 };
            double ns = double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) * unit;
            string fn = m.Groups[3].Success ? m.Groups[3].Value : m.Groups[4].Value;
            slack[fn] = slack.GetValueOrDefault(fn) + unit / 1000 + 1;     // replay shows 3 decimals
            sums[fn] = sums.GetValueOrDefault(fn) + ns;
            counts[fn] = counts.GetValueOrDefault(fn) + 1;
        }
        CliResult report = HotwireCli.Run("report", "-d", dir, "--format", "csv");
        Assert.True(report.ExitCode == 0, report.Stderr);
        var rows = report.Lines.Skip(1).Select(l => l.Split(',')).ToDictionary(f => f[6], f => (Total: double.Parse(f[0]), Calls: int.Parse(f[2])));
        Assert.Equal(new[] { "a", "b", "c", "leaf", "main", "worker" }, rows.Keys.Order());
        Assert.Equal(7, rows["leaf"].Calls);                                // 3 per worker and main's
        foreach ((string fn, (double total, int calls)) in rows)
        {
            Assert.Equal(calls, counts[fn]);
            Assert.InRange(sums[fn], total - slack[fn], total + slack[fn]);
        }

        CliResult chrome = HotwireCli.Run("dump", "--chrome", "-d", dir);
        Assert.True(chrome.ExitCode == 0, chrome.Stderr);
        using var json = System.Text.Json.JsonDocument.Parse(chrome.Stdout);
        var complete = json.RootElement.GetProperty("traceEvents").EnumerateArray().Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        Assert.Equal(rows.Values.Sum(v => v.Calls), complete.Count);
        Assert.All(complete, e => Assert.True(e.GetProperty("dur").GetDouble() >= 0));

        string svg = Path.Combine(dir, "flame.svg");
        CliResult flame = HotwireCli.Run("dump", "--flame-graph", "--svg", svg, "-d", dir);
        Assert.True(flame.ExitCode == 0, flame.Stderr);
        var doc = System.Xml.Linq.XDocument.Load(svg);
        Assert.Contains(doc.Descendants(), e => e.Name.LocalName == "rect");
        Assert.Contains("main", File.ReadAllText(svg));                  // (frames narrower than a pixel are left out, as flamegraph.pl does)
    }

    [Fact]
    public void With_heavy_loss_readers_show_complete_calls_only_on_paths_the_program_takes_and_say_what_they_left_out()
    {
        // 4K buffers hold 64 events: most of the 2.8 M events are lost, at hundreds of places.
        Recording r = Record(Flavour.Graph, "--buffer-size", "4K", "--", "lossy", "200000");
        Assert.Equal(Untraced(Flavour.Graph, "lossy", "200000"), r.Stdout);
        Assert.True(r.Info.TotalLost > 100_000, $"only {r.Info.TotalLost} events lost: the test does not exercise loss");
        List<RawEvent> events = r.Events[MainTid(r)];
        Assert.Contains(events, e => e.LostBefore > 0);
        Assert.InRange(events.Aggregate(0UL, (n, e) => n + e.LostBefore), 1UL, r.Info.TotalLost); // the rest after its last event

        // The complete calls: entry and exit both recorded with no loss mark between them.
        var ticks = new Dictionary<string, ulong>();
        var calls = new Dictionary<string, long>();
        var open = new List<RawEvent>();
        foreach (RawEvent e in events)
        {
            if (e.LostBefore > 0)
            {
                open.Clear();
            }
            if (!e.IsExit)
            {
                open.Add(e);
            }
            else if (open.Count > 0 && open[^1].Depth == e.Depth && open[^1].Site == e.Site)
            {
                string name = r.Name(e);
                ticks[name] = ticks.GetValueOrDefault(name) + (Math.Max(e.Tsc, open[^1].Tsc) - open[^1].Tsc);
                calls[name] = calls.GetValueOrDefault(name) + 1;
                open.RemoveAt(open.Count - 1);
            }
        }
        var time = new Hotwire.Output.TraceTime(r.Info.Clock);
        CliResult report = HotwireCli.Run("report", "-d", r.Dir, "--format", "csv");
        Assert.True(report.ExitCode == 0, report.Stderr);
        var rows = report.Lines.Skip(1).Select(l => l.Split(',')).ToDictionary(f => f[6], f => (TotalNs: long.Parse(f[0]), Calls: long.Parse(f[2])));
        Assert.Equal(calls.Keys.Order(), rows.Keys.Order());
        foreach ((string fn, (long totalNs, long n)) in rows)
        {
            Assert.Equal(calls[fn], n);
            Assert.Equal(time.DurationNs(ticks[fn]), totalNs);
        }

        // Every call path, in the tree the graph and flame graph readers draw and in the folded stacks.
        string[][] allowed = [["main", "north"], ["main", "south"], ["north", "north2"], ["north2", "leaf"], ["south", "south2"], ["south2", "leaf"]];
        void CheckPath(IReadOnlyList<string> path)
        {
            int from = path[0] == Hotwire.Output.SiteNames.LostCallersName ? 1 : 0;
            Assert.True(from == 1 || path[0] == "main", $"a path begins with {path[0]}: {string.Join(";", path)}");
            for (int i = from + 1; i < path.Count; i++)
            {
                Assert.True(allowed.Any(edge => edge[0] == path[i - 1] && edge[1] == path[i]), $"a path the program cannot take: {string.Join(";", path)}");
            }
        }
        var tree = new Hotwire.Output.CallTree();
        Hotwire.Output.CallGraph graph = Hotwire.Output.CallGraph.Read(r.Dir, r.Info, null, tree);
        var names = new Hotwire.Output.SiteNames(r.Info);
        for (int node = 1; node < tree.Count; node++)
        {
            CheckPath(tree.Path(node).Select(names.Function).ToList());
        }
        CliResult folded = HotwireCli.Run("dump", "--flame-graph", "-d", r.Dir);
        Assert.True(folded.ExitCode == 0, folded.Stderr);
        Assert.All(folded.Lines, l => CheckPath(l[..l.LastIndexOf(' ')].Split(';')));

        // Each reader says how many calls it left out, and why.
        Assert.True(graph.Straddling > 0 && graph.CallerLost > 0, $"{graph.Straddling} calls straddle a loss, {graph.CallerLost} lost their callers");
        string leftOut = $"{graph.Straddling} calls were left out: their thread lost events while they ran";
        Assert.Contains(leftOut, report.Stderr);
        Assert.Contains(leftOut, folded.Stderr);
        CliResult graphText = HotwireCli.Run("graph", "-d", r.Dir);
        Assert.Contains(leftOut, graphText.Stderr);
        Assert.Contains($"{graph.CallerLost} calls made after lost events, whose callers are not known, are shown under [lost events]", graphText.Stderr);
        Assert.Contains(") [lost events]\n", graphText.Stdout);
        CliResult replay = HotwireCli.Run("replay", "-d", r.Dir);
        Assert.Contains($"# {leftOut}", replay.Stdout);
        Assert.Contains(" events: the calls open here are left out */", replay.Stdout);
        CliResult chrome = HotwireCli.Run("dump", "--chrome", "-d", r.Dir);
        Assert.Contains(leftOut, chrome.Stderr);
        using var json = System.Text.Json.JsonDocument.Parse(chrome.Stdout);
        Assert.Equal(rows.Values.Sum(v => v.Calls), json.RootElement.GetProperty("traceEvents").EnumerateArray().Count(e => e.GetProperty("ph").GetString() == "X"));
    }

    [Fact]
    public void The_time_filter_keeps_long_calls_and_their_callers_only()
    {
        Recording all = Record(Flavour.Graph, "fib", "20");
        Recording some = Record(Flavour.Graph, "-t", "50us", "--", "fib", "20");
        Assert.Equal(all.Stdout, some.Stdout);
        Assert.Equal(50_000, some.Info.TimeFilterNs);
        List<Call> roots = some.Roots(MainTid(some));
        int kept = 0;
        void Check(Call c)
        {
            kept++;
            Assert.True(c.Returned);
            Assert.True(some.Ns(c.ExitTsc - c.EntryTsc) >= 50_000 * 0.99, $"{c.Name} lasted {some.Ns(c.ExitTsc - c.EntryTsc)} ns");
            c.Children.ForEach(Check);
        }
        roots.ForEach(Check);
        Assert.True(kept >= 2 && kept < all.Events[MainTid(all)].Count / 20, $"kept {kept} calls");
        Assert.Equal("fib", roots.Single().Children.Single().Name);
    }

    [Theory]
    [InlineData()]
    [InlineData("-N", "lib_square")]
    public void Launch_mode_traces_the_libraries_a_program_links_from_their_constructors_on(params string[] filter)
    {
        // uselib has no sites of its own; libflav.so's constructor calls lib_add before main runs.
        Recording r = Record(Flavour.SharedLibrary, [.. filter, "--", "once"]);
        Assert.Equal("12\n", r.Stdout);
        string expected = filter.Length == 0 ? "lib_init{lib_add},lib_poly{lib_square,lib_add}" : "lib_init{lib_add},lib_poly{lib_add}";
        Assert.Equal(expected, string.Join(",", r.Roots(MainTid(r))));
    }

    [Fact]
    public void The_depth_filter_follows_only_the_outermost_frames()
    {
        Recording r = Record(Flavour.Graph, "-D", "3", "--", "fib", "10");
        Assert.Equal("fib(10) = 55\n", r.Stdout);
        Assert.Equal(2, r.Events[MainTid(r)].Max(e => e.Depth));
        Assert.Equal("main{fib{fib,fib}}", string.Join(",", r.Roots(MainTid(r))));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Coroutines_on_the_callers_stack_and_on_the_heap_run_as_untraced(bool noGraveyard)
    {
        // uftrace's t014: traced frames suspended on one stack while frames of another return.
        // A frame the return handler dropped as gone is found again in the graveyard; with the
        // test-only switch that skips the graveyard, the program dies (SIGILL: no record of a frame).
        string prog = TargetBuilder.Get(Flavour.Coroutine);
        const string Expected = "caller's stack: 818\nheap stack: 818\n";
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-coroutine-{Guid.NewGuid():N}");
        var env = new Dictionary<string, string>();
        if (noGraveyard)
        {
            env["HOTWIRE_TEST_NO_GRAVEYARD"] = "1";
        }
        CliResult r = HotwireCli.Run(env, "record", "--tracer", "function_graph", "-o", dir, "--", prog);
        if (noGraveyard)
        {
            Assert.Contains("killed by signal 4", r.Stderr);
            return;
        }
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(Expected, r.Stdout);
        CliResult profiled = HotwireCli.Run("record", "--tracer", "profile", "-o", dir + "-p", "--", prog);
        Assert.True(profiled.ExitCode == 0, profiled.Stderr);
        Assert.Equal(Expected, profiled.Stdout);
        TraceInfo info = TraceData.ReadInfo(dir + "-p");
        ulong Calls(string name) => info.Profile!.Where(p => info.Sites.Single(s => s.Index == p.Site).Function == name).Aggregate(0UL, (n, p) => n + p.Calls);
        // Every call is counted, those that return through the graveyard too (4 resumes per run, two runs).
        Assert.Equal(
            [("main", 1UL), ("run", 2UL), ("resume", 8UL), ("coroutine", 2UL), ("yield_back", 6UL), ("leaf", 14UL)],
            new[] { "main", "run", "resume", "coroutine", "yield_back", "leaf" }.Select(f => (f, Calls(f))));
    }

    /// <summary>
    /// What function_graph shows of one run of coroutine.c: coroutine() under the resume() whose
    /// swapcontext started it; at each switch the frames of the stack left are suspended (a line
    /// says so), and they return later with their exits recorded, so nothing is unwound.
    /// </summary>
    private static readonly string[] s_coroutineRun =
    [
        "  run() {",
        "    resume() {",
        "      /* stack switch: resume suspended, a new stack begins */",
        "      coroutine() {",
        "        leaf();",
        "        yield_back() {",
        "      /* stack switch: yield_back suspended, resume resumed */",
        "    } /* resume */",
        "    leaf();",
        .. Enumerable.Repeat<string[]>([
        "    resume() {",
        "          /* stack switch: resume suspended, yield_back resumed */",
        "        } /* yield_back */",
        "        leaf();",
        "        yield_back() {",
        "      /* stack switch: yield_back suspended, resume resumed */",
        "    } /* resume */",
        "    leaf();",
        ], 2).SelectMany(x => x),
        "    resume() {",
        "          /* stack switch: resume suspended, yield_back resumed */",
        "        } /* yield_back */",
        "      } /* coroutine */",
        "      /* stack switch: resume resumed */",
        "    } /* resume */",
        "    leaf();",
        "  } /* run */",
    ];

    [Fact]
    public void Coroutines_show_the_tree_they_run_with_every_call_returning()
    {
        // coroutine.c runs its coroutine twice: on a stack inside main's own frame (above the frames
        // of run and resume, as a longjmp would leave them), then on the heap (far from them).
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-coroutine-tree-{Guid.NewGuid():N}");
        CliResult rec = HotwireCli.Run("record", "--tracer", "function_graph", "-o", dir, "--", TargetBuilder.Get(Flavour.Coroutine));
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        Assert.Equal("caller's stack: 818\nheap stack: 818\n", rec.Stdout);

        CliResult replay = HotwireCli.Run("replay", "-d", dir);
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        string[] calls = replay.Lines.Where(l => !l.StartsWith('#')).Select(l => l[(l.IndexOf('|', l.IndexOf('|') + 1) + 3)..]).ToArray();
        Assert.Equal(["main() {", .. s_coroutineRun, .. s_coroutineRun, "} /* main */"], calls);
        Assert.DoesNotContain(replay.Lines, l => l.Contains("unwound") || l.Contains("unfinished"));

        // Every exit recorded, every call timed from entry to exit, suspensions included.
        CliResult json = HotwireCli.Run("replay", "-d", dir, "--format", "json");
        Assert.True(json.ExitCode == 0, json.Stderr);
        using var doc = System.Text.Json.JsonDocument.Parse(json.Stdout);
        System.Text.Json.JsonElement root = doc.RootElement;
        Assert.Equal(0, root.GetProperty("unwound").GetInt64());
        Assert.Equal(0, root.GetProperty("unfinished").GetInt64());
        Assert.Equal(0, root.GetProperty("unmatchedExits").GetInt64());
        Assert.Equal(2 * 8, root.GetProperty("stackSwitches").GetInt64());
        var exits = root.GetProperty("events").EnumerateArray().Where(e => e.GetProperty("type").GetString() == "exit").ToList();
        Assert.All(exits, e => Assert.Equal("returned", e.GetProperty("end").GetString()));
        long Total(string f) => exits.Where(e => e.GetProperty("function").GetString() == f).Sum(e => e.GetProperty("durationNs").GetInt64());
        Assert.True(Total("coroutine") >= Total("yield_back"), $"coroutine {Total("coroutine")} ns, its yield_backs {Total("yield_back")} ns");

        // The call tree and the counts: readers agree with replay.
        CliResult report = HotwireCli.Run("report", "-d", dir, "--format", "csv");
        Assert.True(report.ExitCode == 0, report.Stderr);
        var counts = report.Lines.Skip(1).Select(l => l.Split(',')).ToDictionary(f => f[6], f => long.Parse(f[2], System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(new Dictionary<string, long> { ["main"] = 1, ["run"] = 2, ["resume"] = 8, ["coroutine"] = 2, ["yield_back"] = 6, ["leaf"] = 14 }, counts);
        CliResult folded = HotwireCli.Run("dump", "-d", dir, "--flame-graph");
        Assert.True(folded.ExitCode == 0, folded.Stderr);
        Assert.Equal(
            ["main", "main;run", "main;run;leaf", "main;run;resume", "main;run;resume;coroutine", "main;run;resume;coroutine;leaf", "main;run;resume;coroutine;yield_back"],
            folded.Lines.Select(l => l[..l.LastIndexOf(' ')]).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void The_profiler_counts_calls_and_times_without_events()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-profile-{Guid.NewGuid():N}");
        CliResult rec = HotwireCli.Run("record", "--tracer", "profile", "-o", dir, "--", TargetBuilder.Get(Flavour.Graph), "fib", "15");
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        Assert.Contains("fib(15) = 610", rec.Stdout);
        TraceInfo info = TraceData.ReadInfo(dir);
        Assert.Equal(Tracers.Profile, info.Tracer);
        Assert.Equal(0, info.TotalEvents);
        string Fn(ProfileEntry p) => info.Sites.Single(s => s.Index == p.Site).Function;
        ProfileEntry fib = info.Profile!.Single(p => Fn(p) == "fib");
        ProfileEntry main = info.Profile!.Single(p => Fn(p) == "main");
        Assert.Equal(1973UL, fib.Calls);                                  // 2·F(16) − 1
        Assert.Equal(1UL, main.Calls);
        Assert.True(fib.TotalNs > fib.SelfNs && fib.SelfNs > 0);
        Assert.True(main.TotalNs >= fib.MaxNs, $"main ({main.TotalNs} ns) lasts at least as long as its longest fib call ({fib.MaxNs} ns)");
        // The shortest calls are the leaves fib(0)/fib(1): well under a microsecond (a few TSC ticks,
        // 0 ns once truncated on this VM), never a wrapped-around negative interval.
        Assert.True(fib.MinNs < 1000 && fib.MinNs <= fib.MaxNs, $"min {fib.MinNs} ns, max {fib.MaxNs} ns");
        Assert.True(main.SelfNs <= main.TotalNs);
    }

    [Theory]
    [InlineData("--depth", "0", "--depth must be at least 1")]
    [InlineData("--time-filter", "10parsecs", "is not a time")]
    [InlineData("--tracer", "graph", "--tracer takes function, function_graph or profile")]
    public void Bad_graph_options_get_one_line_and_a_usage_exit(string option, string value, string message)
    {
        string[] tracer = option == "--tracer" ? [] : ["--tracer", "function_graph"];
        CliResult r = HotwireCli.Run(["record", .. tracer, option, value, "--", TargetBuilder.Get(Flavour.Graph), "tree"]);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(message, r.Stderr);
        Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void Retval_needs_the_graph_tracer()
    {
        CliResult r = HotwireCli.Run("record", "--retval", "--", TargetBuilder.Get(Flavour.Graph), "tree");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("need --tracer function_graph", r.Stderr);
    }
}
