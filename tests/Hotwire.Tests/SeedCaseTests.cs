namespace Hotwire.Tests;

/// <summary>
/// The seed's case (ftrace/x86: emulate call function while updating in breakpoint handler): while
/// a function's entry is rewritten call→call under running threads, a thread that hits the
/// temporary int3 must execute the new call, never skip it.
/// </summary>
[Collection("engine")]
public class SeedCaseTests(ITestOutputHelper output)
{
    private const int Toggles = 10_000;

    [Theory]
    [InlineData(Flavour.SeedNop5)]
    [InlineData(Flavour.SeedSled)]
    public void Redirected_function_never_runs_its_old_body_while_tracing_is_toggled_10000_times(Flavour flavour)
    {
        (long oldRuns, long newRuns, Session stats) = RunSeedCase(flavour, skip: false);
        Assert.Equal(0, oldRuns);
        Assert.True(newRuns > 0);
        Assert.Equal(0UL, stats.TrapsChained);
    }

    [Fact]
    public void With_the_test_only_skip_switch_the_old_body_runs_so_the_test_has_teeth()
    {
        (long oldRuns, _, Session stats) = RunSeedCase(Flavour.SeedNop5, skip: true);
        Assert.True(oldRuns > 0, $"old body ran {oldRuns} times with skip emulation ({stats.TrapsEmulated} traps)");
    }

    [Fact]
    public void Counting_ops_loses_no_call_while_a_second_ops_is_toggled_10000_times()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 4);
        using Session session = Session.Attach(target.Pid);
        var counted = new CountingOps(["f"], name: "kept");
        session.Register(counted);
        target.Go();
        var toggled = new CountingOps(["f"], name: "toggled");
        for (int i = 0; i < Toggles; i++)
        {
            session.Register(toggled);
            session.Unregister(toggled);
        }
        (long old, _, long calls) = target.Stop();
        output.WriteLine($"calls {calls}, counted {counted.Count("f")}, traps emulated {session.TrapsEmulated}, stale {session.TrapsStale}");
        Assert.Equal(calls, old);
        Assert.Equal((ulong)calls, counted.Count("f"));
        Assert.True(session.TrapsEmulated > 0, "no thread ever hit a breakpoint: the test did not exercise the protocol");
    }

    private (long Old, long New, Session Stats) RunSeedCase(Flavour flavour, bool skip)
    {
        using var target = new SeedTarget(flavour, threads: 4);
        target.Go();
        using Session session = Session.Attach(target.Pid, new SessionOptions { SkipInt3Emulation = skip });
        ulong fNew = session.Image.Modules.Single(m => m.Sites.Any(s => s.Function == "f")).Elf.ReadSymbols(dynamic: false)
            .Single(s => s.Name == "f_new").Value + session.Image.Modules.Single(m => m.Sites.Any(s => s.Function == "f")).Bias;
        session.Register(new RedirectOps("f", fNew));
        Thread.Sleep(20); // a thread that passed the site before the redirect finishes its old call
        (long old0, long new0, _) = target.Counts();
        var tracing = new CountingOps(["f"]);
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < Toggles; i++)
        {
            session.Register(tracing);
            session.Unregister(tracing);
        }
        clock.Stop();
        (long old1, long new1, long calls) = target.Counts();
        output.WriteLine($"{flavour} skip={skip}: {2 * Toggles} rewrites in {clock.ElapsedMilliseconds} ms; old body {old1 - old0}, new {new1 - new0}, calls {calls}; " +
            $"traps emulated {session.TrapsEmulated}, stale {session.TrapsStale}, chained {session.TrapsChained}, syncs {session.Syncs}");
        Assert.Equal((ulong)(2 * Toggles + 1) * 3 + (flavour == Flavour.SeedSled ? 0UL : 0UL), session.Syncs);
        return (old1 - old0, new1 - new0, session);
    }
}
