using System.Net.Sockets;
using Hotwire.Livepatch;
using Hotwire.Tracing;

namespace Hotwire.Tests;

/// <summary>`hotwire patch` on running processes: the seed's case as a user runs it, a server fixed and
/// unfixed under load, persistence, stacking, the thread check, and bad patches.</summary>
[Collection("engine")]
public class LivePatchTests(ITestOutputHelper output)
{
    private const int Toggles = 10_000;

    private static CliResult Patch(int pid, params string[] args) => HotwireCli.Run(["patch", "--pid", pid.ToString(), .. args]);

    // Runs of f's old and new bodies over 20 ms: which one the process runs now.
    private static (long Old, long New) BodiesRun(SeedTarget target)
    {
        (long old0, long new0, _) = target.Counts();
        (long old1, long new1) = (old0, new0);
        // 20 ms of calls; longer if the threads got no CPU meanwhile (a loaded machine).
        for (int wait = 0; wait < 100 && (wait < 2 || old1 + new1 == old0 + new0); wait++)
        {
            Thread.Sleep(10);
            (old1, new1, _) = target.Counts();
        }
        return (old1 - old0, new1 - new0);
    }

    [Fact]
    public void A_patch_whose_library_is_unloaded_is_listed_as_unloaded_and_the_reloaded_library_can_be_patched_again()
    {
        // dlclose takes the patched code away; a later dlopen brings it back unpatched. Every
        // command must go on working and say what is true.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.DlOpener));
        string Ask(string command)
        {
            target.WriteLine(command);
            return target.ReadLine(TimeSpan.FromSeconds(10)) ?? "(no answer)";
        }
        string fix = TargetBuilder.Patch("polyfix");
        Assert.Equal("loaded", Ask("load"));
        Assert.Equal("12", Ask("call"));
        CliResult applied = Patch(target.Pid, fix);
        Assert.True(applied.ExitCode == 0, applied.Stderr);
        Assert.Equal("1003", Ask("call"));
        Assert.Equal("unloaded", Ask("unload"));

        CliResult list = Patch(target.Pid, "--list");
        Assert.True(list.ExitCode == 0, list.Stderr);
        Assert.Matches(@"\b1\s+unloaded\s", list.Stdout);
        Assert.Equal("loaded", Ask("load"));
        Assert.Equal("12", Ask("call"));                          // the new copy runs its own code
        Assert.Matches(@"\b1\s+unloaded\s", Patch(target.Pid, "--list").Stdout);

        CliResult again = Patch(target.Pid, fix);
        Assert.True(again.ExitCode == 0, again.Stderr);
        Assert.Equal("1003", Ask("call"));
        CliResult count = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "lib_*", "--duration", "0.2");
        Assert.True(count.ExitCode == 0, count.Stderr);
        CliResult reverted = Patch(target.Pid, "--revert");
        Assert.True(reverted.ExitCode == 0, reverted.Stderr);
        Assert.Equal("12", Ask("call"));
        Assert.Matches(@"\b2\s+reverted\s", Patch(target.Pid, "--list").Stdout);
    }

    [Fact]
    public void The_seed_case_as_a_user_runs_it_the_old_body_never_runs_after_patch_returns()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 4);
        target.Go();
        CliResult patched = Patch(target.Pid, TargetBuilder.Patch("seedfix"));
        Assert.True(patched.ExitCode == 0, patched.Stderr);
        Assert.Contains("patch 1 (seedfix.so) applied", patched.Stderr);
        Thread.Sleep(20); // a call that entered f before the switch finishes in the old body
        (long old0, long new0, _) = target.Counts();

        // A new Hotwire adopts the patch; function tracing of f goes on and off 10,000 times.
        using Session session = Session.Attach(target.Pid, new SessionOptions { ExtraSharedBytes = TraceBufferOptions.SharedBytes(new TraceBufferOptions()) });
        LivePatcher.Open(session);
        var kept = new CountingOps(["f"], name: "kept");
        session.Register(kept);
        var tracer = new FunctionTracer(new TraceBufferOptions(BufferBytes: 4096), ["f"]);
        for (int i = 0; i < Toggles; i++)
        {
            session.Register(tracer);
            session.Unregister(tracer);
        }
        Assert.True(tracer.BuffersInUse > 0, "the tracer saw calls while on");
        session.Unregister(kept);
        (long old1, long new1, _) = target.Counts();
        output.WriteLine($"old {old1 - old0}, new {new1 - new0}, kept {kept.Count("f")}, traps {session.TrapsEmulated}");
        Assert.Equal(0, old1 - old0);
        Assert.True(new1 - new0 >= (long)kept.Count("f") && kept.Count("f") > 0);
        Assert.True(session.TrapsEmulated > 0, "no thread hit a breakpoint: the protocol was not exercised");
        session.Detach();

        // The patch stays after this Hotwire too.
        (long old2, long new2, _) = target.Counts();
        Thread.Sleep(50);
        (long old3, long new3, _) = target.Counts();
        Assert.Equal(old2, old3);
        Assert.True(new3 > new2);
    }

    [Fact]
    public void Every_call_is_traced_while_the_patched_function_is_traced()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 4, pauseIterations: 20_000);
        target.Go();
        Assert.Equal(0, Patch(target.Pid, TargetBuilder.Patch("seedfix")).ExitCode);
        Thread.Sleep(20);
        (long old0, _, _) = target.Counts();
        using Session session = Session.Attach(target.Pid, new SessionOptions { ExtraSharedBytes = TraceBufferOptions.SharedBytes(new TraceBufferOptions(BufferBytes: 32 << 20, MaxThreads: 8)) });
        LivePatcher.Open(session);
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-patch-{Guid.NewGuid():N}");
        var tracer = new FunctionTracer(new TraceBufferOptions(BufferBytes: 32 << 20, MaxThreads: 8), ["f"]); // holds every event even if the recorder gets no CPU
        var kept = new CountingOps(["f"], name: "kept");
        using var recorder = new Recorder(session, tracer, dir);
        recorder.NoteTracedSites(session.Change([], [kept, tracer])[tracer]); // on together: they see the same calls
        recorder.Start();
        var toggled = new CountingOps(["f"], name: "toggled");
        for (int i = 0; i < 2000; i++)
        {
            session.Register(toggled);
            session.Unregister(toggled);
        }
        session.Change([tracer, kept], []);   // both off in one batch: they saw the same calls
        Thread.Sleep(50);                      // a thread preempted inside the trampoline finishes its event
        RecordSummary sum = recorder.Finish("seedcase");
        (long old, _, _) = target.Stop();
        output.WriteLine($"events {sum.Events}, lost {sum.Lost} (no buffer {tracer.LostNoBuffer}), buffers {tracer.BuffersInUse}, kept {kept.Count("f")}");
        Assert.Equal(0UL, sum.Lost);
        Assert.Equal(kept.Count("f"), (ulong)sum.Events);
        Assert.True(sum.Events > 1000);
        Assert.Equal(old0, old);                                          // no run of the old body after the patch
    }

    [Fact]
    public void With_the_test_only_skip_switch_the_old_body_runs_so_the_test_has_teeth()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 4);
        target.Go();
        Assert.Equal(0, Patch(target.Pid, TargetBuilder.Patch("seedfix")).ExitCode);
        Thread.Sleep(20);
        (long old0, _, _) = target.Counts();
        using Session session = Session.Attach(target.Pid, new SessionOptions { SkipInt3Emulation = true });
        LivePatcher.Open(session);
        var toggled = new CountingOps(["f"]);
        for (int i = 0; i < Toggles; i++)
        {
            session.Register(toggled);
            session.Unregister(toggled);
        }
        (long old1, _, _) = target.Counts();
        Assert.True(old1 - old0 > 0, $"old body ran {old1 - old0} times with skip emulation");
        session.Detach();
    }

    [Theory]
    [InlineData(Flavour.PatchServer)]
    [InlineData(Flavour.PatchServerPlain)] // no patch sites: the handler is replaced at its relocated entry
    public async Task A_server_under_load_is_fixed_then_unfixed_with_no_failed_or_wrong_response(Flavour flavour)
    {
        string exe = TargetBuilder.Get(flavour);
        using var server = TargetProcess.Start(exe);
        int port = int.Parse(server.ReadyWords[2]);
        var clock = Stopwatch.StartNew();
        using var stop = new CancellationTokenSource();
        var log = new List<(long Sent, string Reply)>[4];
        long errors = 0, wrong = 0;
        var clients = Enumerable.Range(0, 4).Select(c => Task.Run(() =>
        {
            log[c] = [];
            try
            {
                using var tcp = new TcpClient("127.0.0.1", port);
                using var reader = new StreamReader(tcp.GetStream());
                using var writer = new StreamWriter(tcp.GetStream()) { AutoFlush = true };
                for (long n = c * 1_000_000; !stop.IsCancellationRequested; n++)
                {
                    long sent = clock.ElapsedTicks;
                    writer.Write($"{n}\n");
                    string reply = reader.ReadLine() ?? throw new IOException("connection closed");
                    if (reply != $"old {2 * n}" && reply != $"new {3 * n}")
                    {
                        Interlocked.Increment(ref wrong);
                    }
                    log[c].Add((sent, reply.Split(' ')[0]));
                }
            }
            catch (Exception e) when (e is IOException or SocketException)
            {
                Interlocked.Increment(ref errors);
            }
        })).ToArray();
        Thread.Sleep(300);
        long patchStart = clock.ElapsedTicks;
        CliResult patched = Patch(server.Pid, TargetBuilder.Patch("serverfix"));
        long patchEnd = clock.ElapsedTicks;
        Assert.True(patched.ExitCode == 0, patched.Stderr);
        Thread.Sleep(300);
        long revertStart = clock.ElapsedTicks;
        CliResult reverted = Patch(server.Pid, "--revert");
        long revertEnd = clock.ElapsedTicks;
        Assert.True(reverted.ExitCode == 0, reverted.Stderr);
        Thread.Sleep(300);
        stop.Cancel();
        await Task.WhenAll(clients);

        var all = log.SelectMany(l => l).ToList();
        output.WriteLine($"{all.Count} requests; patch took {(patchEnd - patchStart) * 1000.0 / Stopwatch.Frequency:F0} ms");
        Assert.Equal(0, errors);
        Assert.Equal(0, wrong);
        Assert.All(all.Where(r => r.Sent < patchStart), r => Assert.Equal("old", r.Reply));
        Assert.All(all.Where(r => r.Sent > patchEnd && r.Sent < revertStart), r => Assert.Equal("new", r.Reply));
        Assert.All(all.Where(r => r.Sent > revertEnd), r => Assert.Equal("old", r.Reply));
        Assert.True(all.Count(r => r.Sent > patchEnd && r.Sent < revertStart) > 100, "requests were served while patched");
        Assert.True(all.Count(r => r.Sent > revertEnd) > 100, "requests were served after the revert");

        // The fix called the program's static scale() and counted in its static `served`.
        using var tcp = new TcpClient("127.0.0.1", port);
        using var r = new StreamReader(tcp.GetStream());
        using var w = new StreamWriter(tcp.GetStream()) { AutoFlush = true };
        w.Write("stats\n");
        Assert.Equal($"served {all.Count}", r.ReadLine());
        KillTests.AssertTextEqualsFile(server.Pid, exe, "the server after the revert");
    }

    [Fact]
    public void A_function_without_a_patch_site_is_patched_traced_while_patched_and_reverted_by_a_later_hotwire()
    {
        // patchserver built without any patch-site flag: `hotwire patch` relocates handler's entry.
        string exe = TargetBuilder.Get(Flavour.PatchServerPlain);
        using var server = TargetProcess.Start(exe);
        using var connection = new ServerConnection(int.Parse(server.ReadyWords[2]));
        Func<long, string> Ask = connection.Ask;
        Assert.Equal("old 10", Ask(5));
        CliResult patched = Patch(server.Pid, TargetBuilder.Patch("serverfix"));
        Assert.True(patched.ExitCode == 0, patched.Stderr);
        Assert.Equal("new 15", Ask(5));
        Assert.Equal(0, Patch(server.Pid, TargetBuilder.Patch("serverfix2")).ExitCode);   // stacked
        Assert.Equal("v2 15", Ask(5));

        // Traced while patched (the patch's jmp becomes the trampoline's redirect), then Hotwire is
        // killed: its dead-man switch takes the tracing away and leaves the patch.
        using (Process counting = HotwireCli.Start("count", "--relocate", "-F", "handler", "--pid", server.Pid.ToString()))
        {
            string? line = counting.StandardError.ReadLine();
            Assert.True(line is not null && line.Contains("counting"), line);
            for (int i = 0; i < 100; i++)
            {
                Assert.Equal($"v2 {3 * i}", Ask(i));
            }
            counting.Kill();
            counting.WaitForExit();
        }
        Thread.Sleep(300);                                              // the agent's dead-man switch: 50 ms
        Assert.Equal("v2 15", Ask(5));

        // Each later `hotwire patch` adopts the patches a killed or finished one left.
        Assert.Equal(0, Patch(server.Pid, "--revert").ExitCode);
        Assert.Equal("new 15", Ask(5));
        Assert.Equal(0, Patch(server.Pid, "--revert").ExitCode);
        Assert.Equal("old 10", Ask(5));
        KillTests.AssertTextEqualsFile(server.Pid, exe, "the server after both reverts");
        Assert.Equal(0, Patch(server.Pid, TargetBuilder.Patch("serverfix")).ExitCode);
        Assert.Equal("new 15", Ask(5));
    }

    [Fact]
    public void Patches_stack_revert_newest_first_replace_atomically_and_list_from_a_new_hotwire()
    {
        using var server = TargetProcess.Start(TargetBuilder.Get(Flavour.PatchServer));
        using var connection = new ServerConnection(int.Parse(server.ReadyWords[2]));
        Func<long, string> Ask = connection.Ask;

        Assert.Contains("has no live patches", Patch(server.Pid, "--list").Stdout);
        Assert.Equal("old 10", Ask(5));
        Assert.Equal(0, Patch(server.Pid, TargetBuilder.Patch("serverfix")).ExitCode);
        Assert.Equal("new 15", Ask(5));
        Assert.Equal(0, Patch(server.Pid, TargetBuilder.Patch("serverfix2")).ExitCode);
        Assert.Equal("v2 15", Ask(5));
        Assert.Equal(0, Patch(server.Pid, "--revert").ExitCode);
        Assert.Equal("new 15", Ask(5));
        Assert.Equal(0, Patch(server.Pid, TargetBuilder.Patch("serverfix2")).ExitCode);
        CliResult replaced = Patch(server.Pid, "--replace", TargetBuilder.Patch("serverfix"));
        Assert.True(replaced.ExitCode == 0, replaced.Stderr);
        Assert.Equal("new 15", Ask(5));
        string[] list = Patch(server.Pid, "--list").Lines.Where(l => !l.StartsWith('#')).ToArray();
        Assert.Equal(["1 superseded", "2 reverted", "3 superseded", "4 active"], list.Select(l => string.Join(' ', l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[..2])));
        Assert.Equal(0, Patch(server.Pid, "--revert").ExitCode);
        Assert.Equal("old 10", Ask(5));                                 // --replace left nothing beneath
        CliResult none = Patch(server.Pid, "--revert");
        Assert.Equal(1, none.ExitCode);
        Assert.Contains("has no live patch to revert", none.Stderr);
    }

    [Theory]
    [InlineData("function_graph")]
    [InlineData("profile")]
    public async Task A_patched_function_can_be_traced_with_the_graph_tracer_and_the_profiler(string tracer)
    {
        using var server = TargetProcess.Start(TargetBuilder.Get(Flavour.PatchServer));
        int port = int.Parse(server.ReadyWords[2]);
        Assert.Equal(0, Patch(server.Pid, TargetBuilder.Patch("serverfix")).ExitCode);
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-patch-{Guid.NewGuid():N}");
        using var stop = new CancellationTokenSource();
        int requests = 0;
        Task client = Task.Run(() =>
        {
            using var tcp = new TcpClient("127.0.0.1", port);
            using var r = new StreamReader(tcp.GetStream());
            using var w = new StreamWriter(tcp.GetStream()) { AutoFlush = true };
            for (long n = 1; !stop.IsCancellationRequested; n++)
            {
                w.Write($"{n}\n");
                Assert.Equal($"new {3 * n}", r.ReadLine());
                requests++;
            }
        });
        CliResult rec = HotwireCli.Run("record", "--tracer", tracer, "-F", "handler", "-F", "scale", "-d", "1", "-o", dir, "--pid", server.Pid.ToString());
        stop.Cancel();
        await client;
        Assert.True(rec.ExitCode == 0, rec.Stderr);
        Assert.True(requests > 100);
        CliResult report = HotwireCli.Run("report", "-d", dir, "--format", "csv");
        Assert.True(report.ExitCode == 0, report.Stderr);
        var calls = report.Lines.Skip(1).Select(l => l.Split(',')).ToDictionary(f => f[6], f => long.Parse(f[2]));
        Assert.True(calls["handler"] > 50, report.Stdout);
        // The new handler calls scale(): its calls are traced too (one call may straddle the start or the end of tracing).
        Assert.InRange(calls["scale"], calls["handler"] - 1, calls["handler"] + 1);
        Assert.Equal(1, Patch(server.Pid, "--list").Lines.Count(l => l.Contains("active")));   // the patch is still there
    }

    [Fact]
    public void SIGKILL_of_hotwire_patch_at_any_moment_of_apply_leaves_a_record_that_tells_the_truth()
    {
        // 40 trials: `hotwire patch` is killed 0-300 ms after its agent thread appears (attach,
        // adoption, loading, the batch, the record). After each, the record (what --list shows)
        // must say what the process runs, and --revert must work on what it says.
        const int Trials = 40;
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 2);
        target.Go();
        var random = new Random(22);
        int applied = 0, notApplied = 0;
        for (int trial = 0; trial < Trials; trial++)
        {
            using (Process patching = HotwireCli.Start("patch", "--pid", target.Pid.ToString(), TargetBuilder.Patch("seedfix")))
            {
                var clock = Stopwatch.StartNew();
                while (EarlierAgents.AgentThreads(target.Pid).Count == 0 && !patching.HasExited && clock.ElapsedMilliseconds < 30_000)
                {
                    Thread.Sleep(1);
                }
                Thread.Sleep(random.Next(0, 300));
                try
                {
                    patching.Kill();
                }
                catch (InvalidOperationException)
                {
                }
                patching.WaitForExit();
            }
            EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);   // what --list waits for
            PatchRegistryData? data;
            using (var memory = Hotwire.Memory.ProcessMemory.Open(target.Pid))
            {
                data = LivePatcher.Read(target.Pid, memory, out _);
            }
            int active = data?.Patches.Count(p => p.State == "active") ?? 0;
            (long oldRuns, long newRuns) = BodiesRun(target);
            output.WriteLine($"trial {trial}: {active} active, old +{oldRuns}, new +{newRuns}");
            if (active > 0)
            {
                applied++;
                Assert.True(oldRuns == 0 && newRuns > 0, $"trial {trial}: the record says patched, but old +{oldRuns}, new +{newRuns}");
                for (int i = 0; i < active; i++)
                {
                    CliResult revert = Patch(target.Pid, "--revert");
                    Assert.True(revert.ExitCode == 0, $"trial {trial}: {revert.Stderr}");
                }
            }
            else
            {
                notApplied++;
                Assert.True(oldRuns > 0 && newRuns == 0, $"trial {trial}: the record says unpatched, but old +{oldRuns}, new +{newRuns}");
            }
        }
        output.WriteLine($"{applied} trials ended patched, {notApplied} unpatched");

        // Afterwards everything works: list, apply, replace, a traced run, revert.
        Assert.Equal(0, Patch(target.Pid, TargetBuilder.Patch("seedfix")).ExitCode);
        CliResult replaced = Patch(target.Pid, "--replace", TargetBuilder.Patch("seedfix"));
        Assert.True(replaced.ExitCode == 0, replaced.Stderr);
        CliResult list = Patch(target.Pid, "--list");
        Assert.Single(list.Lines, l => l.Contains("  active", StringComparison.Ordinal));
        CliResult count = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "f", "--duration", "0.3");
        Assert.True(count.ExitCode == 0, count.Stderr);
        Assert.Matches(@"\b[1-9]\d*\s+f\b", count.Stdout);
        Assert.Equal(0, Patch(target.Pid, "--revert").ExitCode);
        (long o, long n) = BodiesRun(target);
        Assert.True(o > 0 && n == 0, "after the last revert f runs its original body");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SIGKILL_between_the_switch_and_the_final_record_leaves_no_orphaned_patch(bool noIntentRecord)
    {
        // Hotwire is held right after the batch switched f to the patch and before the record is
        // final, and killed there. The intent written before the batch tells the next reader the
        // truth; with the test-only switch that skips it, the patch is orphaned (the old bug).
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 2);
        target.Go();
        var env = new Dictionary<string, string> { ["HOTWIRE_TEST_PAUSE_AFTER_PATCH_BATCH"] = "30000" };
        if (noIntentRecord)
        {
            env["HOTWIRE_TEST_NO_PATCH_INTENT"] = "1";
        }
        using (Process patching = HotwireCli.Start(env, "patch", "--pid", target.Pid.ToString(), TargetBuilder.Patch("seedfix")))
        {
            string? line = patching.StandardError.ReadLine();
            Assert.Equal("hotwire: test: the sites are switched, the record is not yet written", line);
            patching.Kill();
            patching.WaitForExit();
        }
        CliResult list = Patch(target.Pid, "--list");
        Assert.Equal(0, list.ExitCode);
        (long oldRuns, long newRuns) = BodiesRun(target);
        Assert.True(oldRuns == 0 && newRuns > 0, "the batch had switched f: the patch stays in place");
        if (noIntentRecord)
        {
            Assert.Contains("no live patches", list.Stdout);   // the lie the intent record prevents
            Assert.Contains("holds e9", Patch(target.Pid, "--replace", TargetBuilder.Patch("seedfix")).Stderr);
            return;
        }
        Assert.Contains("1  active", list.Stdout);
        CliResult replaced = Patch(target.Pid, "--replace", TargetBuilder.Patch("seedfix"));
        Assert.True(replaced.ExitCode == 0, replaced.Stderr);
        Assert.Equal(0, Patch(target.Pid, "--revert").ExitCode);
        (long o, long n) = BodiesRun(target);
        Assert.True(o > 0 && n == 0, "after the revert f runs its original body");
    }

    [Fact]
    public void A_patch_survives_SIGKILL_of_a_tracing_hotwire_while_tracing_is_undone()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 2);
        target.Go();
        Assert.Equal(0, Patch(target.Pid, TargetBuilder.Patch("seedfix")).ExitCode);
        using Process counting = HotwireCli.Start("count", "-F", "f", "--pid", target.Pid.ToString());
        string? line = counting.StandardError.ReadLine();               // "counting ..." once the sites are live
        Assert.NotNull(line);
        Thread.Sleep(200);
        counting.Kill();
        counting.WaitForExit();
        Thread.Sleep(300);                                              // the agent's dead-man switch: 50 ms
        (long old0, long new0, _) = target.Counts();
        Thread.Sleep(100);
        (long old1, long new1, _) = target.Counts();
        Assert.Equal(old0, old1);
        Assert.True(new1 > new0);
        Assert.Contains("1  active", Patch(target.Pid, "--list").Stdout);
    }

    [Fact]
    public void Wait_quiescent_without_a_limit_says_whom_it_waits_for_and_Ctrl_C_leaves_the_patch_applied()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Graph), "hold", "2", "60000");
        Thread.Sleep(50);                                                 // inside a 60 s nap
        // The option last: a bare --wait-quiescent before the patch would read the patch as a time.
        using Process patching = HotwireCli.Start("patch", "--pid", target.Pid.ToString(), TargetBuilder.Patch("napfix"), "--wait-quiescent");
        patching.StandardOutput.BaseStream.CopyToAsync(Stream.Null);
        var lines = new List<string>();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(30) && patching.StandardError.ReadLine() is { } line)
        {
            lines.Add(line);
            if (line.Contains("still waiting after", StringComparison.Ordinal))
            {
                break;
            }
        }
        output.WriteLine(string.Join("\n", lines));
        Assert.Contains(lines, l => l.Contains("still waiting after 5 s", StringComparison.Ordinal) && l.Contains("nap", StringComparison.Ordinal));
        Assert.Equal(0, Hotwire.Interop.Ptrace.kill(patching.Id, 2 /* SIGINT */));
        Assert.True(patching.WaitForExit(10_000));
        string rest = patching.StandardError.ReadToEnd();
        Assert.Equal(130, patching.ExitCode);
        Assert.Contains("interrupted while waiting: the patch stays applied", rest);
        Assert.Contains("1  active", Patch(target.Pid, "--list").Stdout);
    }

    [Fact]
    public void Wait_quiescent_waits_while_a_thread_sleeps_inside_the_old_function()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Graph), "hold", "4", "3000");
        Thread.Sleep(50);                                                 // inside the first nap's 3 s sleep
        var clock = Stopwatch.StartNew();
        CliResult r = Patch(target.Pid, "--wait-quiescent=5s", TargetBuilder.Patch("napfix"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        output.WriteLine(r.Stderr);
        Assert.Contains("still inside replaced code", r.Stderr);
        Assert.Contains("in nap", r.Stderr);
        Assert.Contains("quiescent: no thread", r.Stderr);
        Assert.True(clock.Elapsed > TimeSpan.FromSeconds(1) && clock.Elapsed < TimeSpan.FromSeconds(6), $"took {clock.Elapsed}: it waited for the 3 s nap to end");
        Assert.Equal($"held {Enumerable.Range(0, 4).Sum(i => 2 * i)}", target.ReadLine(TimeSpan.FromSeconds(10)));
    }

    [Theory]
    [InlineData("bad_undefined", "needs no_such_symbol_anywhere")]
    [InlineData("bad_tls", "uses thread-local storage")]
    [InlineData("bad_ctor", "has constructors (init)")]
    [InlineData("nothing", "replaces nothing")]
    public void A_bad_patch_changes_nothing_in_the_target(string patch, string message)
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 2);
        target.Go();
        CliResult r = Patch(target.Pid, TargetBuilder.Patch(patch));
        Assert.Equal(1, r.ExitCode);
        Assert.Contains(message, r.Stderr);
        Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.DoesNotContain("memfd:hotwire", File.ReadAllText($"/proc/{target.Pid}/maps")); // not even attached
        (long old0, long new0, _) = target.Counts();
        Thread.Sleep(50);
        (long old1, long new1, _) = target.Counts();
        Assert.True(old1 > old0);
        Assert.Equal(0, new1);
    }

    [Fact]
    public void Bad_mappings_and_files_get_one_clear_line()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 1);
        string seedfix = TargetBuilder.Patch("seedfix");
        (string[] Args, int Code, string Message)[] cases =
        [
            (["--map", "nosuch=f", seedfix], 1, "has no function nosuch"),
            // libc has no patch sites; this entry (xor eax,eax; ret) is too short to relocate
            (["--map", "pthread_mutexattr_destroy=f", seedfix], 1, "pthread_mutexattr_destroy cannot be replaced: it has no compiler site and its entry cannot be relocated (shorter than 5 bytes"),
            (["--map", "f=g", seedfix], 1, "defines no function g"),
            (["--map", "f=f", "--map", "f=x", seedfix], 2, "f is mapped twice"),
            ([TargetBuilder.Get(Flavour.SeedNop5)], 1, "is not a shared object"),
            (["/nonexistent/fix.so"], 1, "no such patch file"),
            (["--revert"], 1, "has no live patch to revert"),
            ([], 2, "give one of"),
        ];
        foreach ((string[] args, int code, string message) in cases)
        {
            CliResult r = Patch(target.Pid, args);
            Assert.True(r.ExitCode == code, $"{string.Join(' ', args)}: exit {r.ExitCode}: {r.Stderr}");
            Assert.Contains(message, r.Stderr);
            Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
        Assert.DoesNotContain("memfd:hotwire", File.ReadAllText($"/proc/{target.Pid}/maps")); // refused before attaching
        byte[] bytes = File.ReadAllBytes(seedfix);
        bytes[18] = 183;
        string arm = Path.Combine(Path.GetTempPath(), $"hotwire-arm-{Environment.ProcessId}.so");
        File.WriteAllBytes(arm, bytes);
        CliResult a = Patch(target.Pid, arm);
        Assert.Equal(1, a.ExitCode);
        Assert.Contains("not x86-64", a.Stderr);
    }
}

/// <summary>One connection to patchserver: a request per line, the reply.</summary>
internal sealed class ServerConnection : IDisposable
{
    private readonly TcpClient _tcp;
    private readonly StreamReader _reader;
    private readonly StreamWriter _writer;

    public ServerConnection(int port)
    {
        _tcp = new TcpClient("127.0.0.1", port);
        _reader = new StreamReader(_tcp.GetStream());
        _writer = new StreamWriter(_tcp.GetStream()) { AutoFlush = true };
    }

    public string Ask(long n)
    {
        _writer.Write($"{n}\n");
        return _reader.ReadLine()!;
    }

    public void Dispose()
    {
        _writer.Dispose();
        _reader.Dispose();
        _tcp.Dispose();
    }
}
