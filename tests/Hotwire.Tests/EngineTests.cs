using System.Net.Sockets;
using Hotwire.Injection;

namespace Hotwire.Tests;

[CollectionDefinition("engine", DisableParallelization = true)]
public sealed class EngineCollection;

/// <summary>The engine on real processes: batches, stale traps, attach in syscalls, verify-before-write, detach.</summary>
[Collection("engine")]
public class EngineTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(1)]
    [InlineData(255)]
    [InlineData(256)]
    [InlineData(257)]
    [InlineData(50_000)]
    public void Batches_enable_and_disable_while_threads_run_through_every_site(int size)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Many));
        using Session session = Session.Attach(target.Pid);
        string[] names = Enumerable.Range(0, size).Select(i => $"f{i}").ToArray();
        var ops = new CountingOps(size == 50_000 ? ["f*"] : names);
        ulong syncs0 = session.Syncs;
        for (int round = 0; round < 3; round++)
        {
            Assert.Equal(size, session.Register(ops).Count);
            Thread.Sleep(50);
            session.Unregister(ops);
        }
        Assert.Equal(6UL * 3, session.Syncs - syncs0); // exactly three syncs per batch, whatever its size
        Assert.True(ops.Count("f0") > 0, "the threads did not run through the sites while they were enabled");
        Assert.Equal(0UL, session.TrapsChained);   // no SIGTRAP reached the program
        Assert.False(target.Process.HasExited);
        output.WriteLine($"{size} sites: traps emulated {session.TrapsEmulated}, stale {session.TrapsStale}");
        session.Detach();
        AssertOriginalBytes(target.Pid, session);
    }

    [Fact]
    public void A_stale_trap_held_until_the_batch_finished_re_executes_the_site()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 1);
        target.Go();
        using Session session = Session.Attach(target.Pid);
        int worker = Directory.GetDirectories($"/proc/{target.Pid}/task").Select(d => int.Parse(Path.GetFileName(d)))
            .First(t => t != target.Pid && t != session.AgentTid);
        // A debugger-style hold: the worker's SIGTRAP from our int3 stops it in ptrace before the handler runs.
        Tracee held = PtraceThread.Shared.Invoke(() => Tracee.Seize(target.Pid, worker));
        var ops = new CountingOps(["f"]);
        bool caught = false;
        for (int i = 0; i < 2000 && !caught; i++)
        {
            session.Register(ops);
            caught = PtraceThread.Shared.Invoke(() => held.PollSignalStop(out int sig) && sig == 5);
            if (!caught)
            {
                session.Unregister(ops);
            }
        }
        Assert.True(caught, "the worker never hit a breakpoint");
        ulong stale0 = session.TrapsStale;
        PtraceThread.Shared.Invoke(held.Detach); // the batch is long finished: deliver the SIGTRAP now
        Thread.Sleep(50);
        Assert.True(session.TrapsStale > stale0, "the handler did not take the stale path");
        Assert.Equal(0UL, session.TrapsChained);
        (long old, _, long calls) = target.Stop();
        Assert.Equal(calls, old); // every call ran f's body exactly once
    }

    [Theory]
    [InlineData("read")]
    [InlineData("futex")]
    [InlineData("nanosleep")]
    [InlineData("accept")]
    [InlineData("epoll")]
    public void Attach_while_the_thread_is_blocked_in_a_syscall_resumes_it_correctly(string mode)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Blocker), mode);
        Thread.Sleep(100); // let the main thread enter the call
        using (Session session = Session.Attach(target.Pid))
        {
            output.WriteLine($"{mode}: thread stopped {session.LongestStop.TotalMilliseconds:F2} ms");
            session.Register(new CountingOps(["report"]));
        }
        string expected;
        switch (mode)
        {
            case "accept":
                using (var client = new TcpClient())
                {
                    client.Connect("127.0.0.1", int.Parse(target.ReadyWords[2]));
                    expected = "accepted 1";
                    Assert.Equal(expected, target.ReadLine(TimeSpan.FromSeconds(10)));
                }
                return;
            case "nanosleep":
                string? slept = target.ReadLine(TimeSpan.FromSeconds(10));
                Assert.NotNull(slept);
                Assert.StartsWith("slept ", slept);
                long ms = long.Parse(slept[6..]);
                Assert.InRange(ms, 1500, 4000); // restarted for the time that was left, not from scratch, not cut short
                return;
            case "read":
                target.WriteLine("hello");
                expected = "read 6";
                break;
            case "futex":
                target.WriteLine("wake");
                expected = "futex 1";
                break;
            default:
                target.WriteLine("event");
                expected = "epoll 1";
                break;
        }
        Assert.Equal(expected, target.ReadLine(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void A_site_someone_else_holds_is_not_touched_and_the_error_shows_both_bytes()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 1);
        using Session session = Session.Attach(target.Pid);
        SiteRecord f = session.SitesOf("f").Single();
        PokeByte(target.Pid, f.Address, 0xcc); // as a debugger's breakpoint would
        var e = Assert.Throws<HotwireException>(() => session.Register(new CountingOps(["f"])));
        Assert.Contains("holds cc1f440000, expected 0f1f440000", e.Message);
        Assert.Contains("a debugger or another tool", e.Message);
        Assert.Equal(0xcc, PeekByte(target.Pid, f.Address));
        PokeByte(target.Pid, f.Address, 0x0f);
        target.Go();
        Assert.Single(session.Register(new CountingOps(["f"]))); // nothing was left half-done
    }

    [Fact]
    public void A_second_redirect_of_a_function_is_refused_and_nothing_changes()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 1);
        target.Go();
        using Session session = Session.Attach(target.Pid);
        ulong fNew = FNew(session);
        session.Register(new RedirectOps("f", fNew, "first"));
        SiteRecord f = session.SitesOf("f").Single();
        SiteBytes before = f.Current;
        var e = Assert.Throws<HotwireException>(() => session.Register(new RedirectOps("f", fNew, "second")));
        Assert.Contains("already redirected by 'first'", e.Message);
        Assert.Equal(before, f.Current);
        (long o0, long n0, _) = target.Counts();
        (long o1, long n1) = (o0, n0);
        for (int wait = 0; wait < 200 && n1 == n0; wait++)   // the thread may get no CPU for a while on a loaded machine
        {
            Thread.Sleep(10);
            (o1, n1, _) = target.Counts();
        }
        Assert.Equal(o0, o1);
        Assert.True(n1 > n0);
    }

    [Fact]
    public void After_detach_every_site_has_its_original_bytes_the_handler_is_gone_and_gdb_can_attach()
    {
        using var target = new SeedTarget(Flavour.SeedSled, threads: 2);
        target.Go();
        string before = SigCaught(target.Pid);
        Session session = Session.Attach(target.Pid);
        session.Register(new CountingOps(["f", "f_new"]));
        Assert.NotEqual(before, SigCaught(target.Pid));
        int agent = session.AgentTid;
        session.Detach();
        AssertOriginalBytes(target.Pid, session);
        Assert.Equal(before, SigCaught(target.Pid));
        Assert.False(Directory.Exists($"/proc/{target.Pid}/task/{agent}"));
        Assert.Equal(0, Tracee.TracerOf(target.Pid));

        var gdb = Process.Start(new ProcessStartInfo("gdb", ["-p", target.Pid.ToString(), "-batch", "-ex", "info threads"])
        { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string text = gdb.StandardOutput.ReadToEnd();
        gdb.WaitForExit();
        Assert.Equal(0, gdb.ExitCode);
        Assert.Contains("Thread", text);
        (long old, _, long calls) = target.Stop();
        Assert.Equal(calls, old);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_thread_parked_in_a_signal_handler_whose_saved_pc_is_inside_a_sled_resumes_correctly(bool skipSignalFrames)
    {
        // The handler interrupted f at byte 1 of its 5-NOP sled and waits there; Hotwire converts the
        // sled while it waits. Moving only current PCs leaves the saved one inside the new 5-byte NOP.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.SigSled));
        Assert.Equal("1", target.ReadyWords[2]);
        Session session = Session.Attach(target.Pid, new SessionOptions { SkipSignalFrameSleds = skipSignalFrames });
        var counting = new CountingOps(["f"]);
        session.Register(counting);
        Thread.Sleep(50);
        session.Unregister(counting);   // f holds one 5-byte NOP now (detach would put the sled back)
        target.WriteLine("go");
        string? calls = target.ReadLine(TimeSpan.FromSeconds(10));
        string? done = target.ReadLine(TimeSpan.FromSeconds(10));
        target.Process.WaitForExit(10_000);
        if (target.Process.ExitCode == 0)
        {
            session.Detach();
        }
        if (skipSignalFrames)
        {
            // The switch disables the migration: the thread resumes mid-instruction and the process dies.
            Assert.NotEqual("done", done);
            Assert.Equal(128 + 4, target.Process.ExitCode); // SIGILL: 0f 1f 44 00 00 entered at its 1f
            session.Dispose();
            return;
        }
        Assert.StartsWith("calls ", calls);
        Assert.True(long.Parse(calls!["calls ".Length..]) > 1000, calls);
        Assert.Equal("done", done);
        Assert.Equal(0, target.Process.ExitCode);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void Attach_and_detach_never_make_a_blocked_call_fail_with_EINTR(bool noRewind, bool stopEveryThread)
    {
        // Every session stops the main thread (injection); converting the sled of f stops every
        // thread that is not blocked in a system call, and, with the test-only switch, every
        // thread: each waiter is then kicked out of its call twice per session.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Waiters));
        TestSwitches.NoSyscallRewind = noRewind;
        TestSwitches.StopEveryThread = stopEveryThread;
        try
        {
            for (int i = 0; i < (noRewind ? 2 : 20); i++)
            {
                using Session session = Session.Attach(target.Pid);
                session.Register(new CountingOps(["f"]));
                session.Detach();
            }
        }
        finally
        {
            TestSwitches.NoSyscallRewind = false;
            TestSwitches.StopEveryThread = false;
        }
        Thread.Sleep(50);
        Dictionary<string, long> counts = KillTests.Counts(target);
        target.WriteLine("quit");
        output.WriteLine(string.Join(", ", counts.Select(kv => $"{kv.Key} {kv.Value}")));
        string[] calls = ["sigwaitinfo", "sigtimedwait", "semop", "semtimedop", "io_getevents", "recv", "epoll_wait"];
        foreach (string call in calls)
        {
            // With the rewinding switched off each call sees our stops: the test reaches every one.
            Assert.True(noRewind ? counts[call] > 0 : counts[call] == 0, $"{call}: {counts[call]} EINTR");
        }
        foreach (string call in new[] { "poll", "read", "futex", "accept", "nanosleep" })
        {
            // The kernel restarts these after a stop by itself: they never return, rewinding or not.
            Assert.True(counts[call] == 0, $"{call}: {counts[call]} EINTR or early returns");
        }
    }

    [Fact]
    public void Attach_to_a_pid_that_does_not_exist_is_a_clear_error()
    {
        var e = Assert.Throws<HotwireException>(() => Session.Attach(int.MaxValue - 7));
        Assert.Contains("no process with pid", e.Message);
    }

    [Fact]
    public void Attach_to_a_process_under_a_debugger_is_refused_and_the_target_is_untouched()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 1);
        Tracee debugger = PtraceThread.Shared.Invoke(() => Tracee.Seize(target.Pid, target.Pid));
        try
        {
            var e = Assert.Throws<HotwireException>(() => Session.Attach(target.Pid));
            Assert.Contains($"already traced by pid {Environment.ProcessId}", e.Message);
            Assert.DoesNotContain("memfd:hotwire", File.ReadAllText($"/proc/{target.Pid}/maps"));
        }
        finally
        {
            PtraceThread.Shared.Invoke(debugger.Detach);
        }
    }

    internal static ulong FNew(Session session)
    {
        var module = session.Image.Modules.Single(m => m.Sites.Any(s => s.Function == "f"));
        return module.Elf.ReadSymbols(dynamic: false).Single(s => s.Name == "f_new").Value + module.Bias;
    }

    internal static void AssertOriginalBytes(int pid, Session session)
    {
        using var memory = Hotwire.Memory.ProcessMemory.Open(pid);
        foreach (SiteRecord s in session.Sites.Where(s => !s.Gone))
        {
            var now = new byte[s.Length];
            Assert.True(memory.TryRead(s.Address, now));
            Assert.Equal(s.Site.OriginalBytes, now);
        }
    }

    private static string SigCaught(int pid)
        => File.ReadAllLines($"/proc/{pid}/status").Single(l => l.StartsWith("SigCgt:", StringComparison.Ordinal));

    private static void PokeByte(int pid, ulong address, byte value)
    {
        using var mem = new FileStream($"/proc/{pid}/mem", FileMode.Open, FileAccess.ReadWrite);
        mem.Position = (long)address;
        mem.WriteByte(value);
    }

    private static int PeekByte(int pid, ulong address)
    {
        using var mem = new FileStream($"/proc/{pid}/mem", FileMode.Open, FileAccess.Read);
        mem.Position = (long)address;
        return mem.ReadByte();
    }
}
