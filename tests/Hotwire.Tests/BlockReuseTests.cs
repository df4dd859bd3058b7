using Hotwire.Procfs;
using Hotwire.Tracing;

namespace Hotwire.Tests;

/// <summary>One Hotwire block per process: later sessions take the earlier one over, never while a thread is inside it.</summary>
[Collection("engine")]
public class BlockReuseTests(ITestOutputHelper output)
{
    [Fact]
    public void A_hundred_attach_detach_cycles_leave_the_target_as_the_first_did()
    {
        // Threads busy in f, others blocked in system calls; every cycle traces f with a real
        // tracer (buffers filled, trampolines placed), every fifth with function_graph (whose shadow
        // stacks stay until the next session takes the block over: the first and last cycles are not).
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Waiters));
        Footprint first = default;
        for (int cycle = 1; cycle <= 100; cycle++)
        {
            using (Session session = Session.Attach(target.Pid))
            {
                Assert.True(cycle == 1 || session.ReusedBlock, $"cycle {cycle}: a new block ({session.NotReusedBecause})");
                RingTracer tracer = cycle % 5 == 3
                    ? new GraphTracer(new TraceBufferOptions(BufferBytes: 1 << 20, MaxThreads: 16), new GraphOptions(), ["f"])
                    : new FunctionTracer(new TraceBufferOptions(BufferBytes: 1 << 20, MaxThreads: 16), ["f"]);
                session.Register(tracer);
                Thread.Sleep(5);
                session.Detach();
            }
            if (!Directory.Exists($"/proc/{target.Pid}"))
            {
                target.Process.WaitForExit();
                Assert.Fail($"cycle {cycle}: the target died (exit {target.Process.ExitCode}): {target.Process.StandardError.ReadToEnd()}");
            }
            if (cycle == 1)
            {
                first = Footprint.Of(target.Pid);
                output.WriteLine($"after the first cycle: {first}");
            }
        }
        Footprint last = Footprint.Of(target.Pid);
        output.WriteLine($"after 100 cycles: {last}");
        Assert.Equal(first.HotwireMappings, last.HotwireMappings);
        Assert.Equal(first.HotwireBytes, last.HotwireBytes);
        Assert.Equal(first.Fds, last.Fds);
        Assert.True(last.RssShmemKb <= first.RssShmemKb, $"RssShmem {first.RssShmemKb} → {last.RssShmemKb} kB");
        Assert.True(last.VmRssKb <= first.VmRssKb + 8, $"VmRSS {first.VmRssKb} → {last.VmRssKb} kB");
        Dictionary<string, long> counts = KillTests.Counts(target);
        Assert.Equal(0, counts["eintr"]);
        Assert.True(counts["f"] > 0);
        target.WriteLine("quit");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_block_with_a_thread_inside_its_code_is_not_taken_over(bool noCheck)
    {
        // The worker's signal handler parks it with its saved PC in the first session's trampoline.
        // The next session must leave that code alone; with the check switched off it takes the
        // block over, poisons the old code with int3, and the released thread dies on it.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Parked));
        using (Session first = Session.Attach(target.Pid))
        {
            first.Register(new CountingOps(["f"]));
            Thread.Sleep(100);   // no SIGTRAP of the batch still being handled: the thread parks in f's trampoline
            target.WriteLine("park");
            string? parked = target.ReadLine(TimeSpan.FromSeconds(30));
            Assert.StartsWith("parked ", parked);
            ulong pc = Convert.ToUInt64(parked!["parked ".Length..], 16);
            MemoryMapping where = ProcMaps.Read(target.Pid).Single(m => pc >= m.Start && pc < m.End);
            output.WriteLine($"{parked}: {where.Path}");
            Assert.StartsWith("/memfd:hotwire", where.Path);
            CodeRegion region = first.SitesOf("f").Single().Region;
            Assert.InRange(pc, region.TargetAddress, region.TargetAddress + region.Size - 1);
            first.Detach();
        }
        AttachAgain(target.Pid, noCheck, "is inside its code");
        target.WriteLine("release");
        string? calls = target.ReadLine(TimeSpan.FromSeconds(10));
        target.Process.WaitForExit(10_000);
        if (noCheck)
        {
            Assert.NotEqual(0, target.Process.ExitCode);   // the thread returned into poisoned code
            return;
        }
        Assert.StartsWith("calls ", calls);
        Assert.Equal(0, target.Process.ExitCode);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_block_a_forked_child_still_runs_through_is_not_taken_over(bool noCheck)
    {
        // The child is forked while f is traced; then Hotwire is SIGKILLed: the dead-man switch
        // restores the parent, but the child's copy of f still jumps into the block's trampoline
        // (a detach would have restored it too, and so would the fork guard, switched off here).
        // Poisoning that code kills the child.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Forker));
        var noGuard = new Dictionary<string, string> { ["HOTWIRE_TEST_NO_FORK_GUARD"] = "1" };
        using (Process counting = HotwireCli.Start(noGuard, "count", "--pid", target.Pid.ToString(), "-F", "f"))
        {
            Assert.Contains("counting", counting.StandardError.ReadLine());
            target.WriteLine("fork");
            Assert.StartsWith("forked ", target.ReadLine(TimeSpan.FromSeconds(10)));
            counting.Kill();
            counting.WaitForExit();
        }
        EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);
        AttachAgain(target.Pid, noCheck, "(forked from pid");
        target.WriteLine("wait");
        Assert.Equal(noCheck ? "child killed by signal 5" : "child exited 0", target.ReadLine(TimeSpan.FromSeconds(10)));
    }

    // A second session, with the takeover check on (it must refuse, for this reason) or off.
    private static void AttachAgain(int pid, bool noCheck, string refusal)
    {
        TestSwitches.NoReuseQuiescenceCheck = noCheck;
        try
        {
            using Session second = Session.Attach(pid);
            Assert.Equal(noCheck, second.ReusedBlock);
            if (!noCheck)
            {
                Assert.Contains(refusal, second.NotReusedBecause);
            }
            second.Detach();
        }
        finally
        {
            TestSwitches.NoReuseQuiescenceCheck = false;
        }
    }

    [Fact]
    public void A_failed_attach_leaves_nothing_behind_and_the_next_one_works()
    {
        // With no fd left under its soft RLIMIT_NOFILE, the bootstrap's memfd_create fails (EMFILE): it
        // undoes its steps, and Hotwire unmaps the bootstrap block once the thread has left it.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Waiters));
        var open = Directory.GetFiles($"/proc/{target.Pid}/fd").Select(f => int.Parse(Path.GetFileName(f))).ToHashSet();
        Prlimit(target.Pid, $"{Enumerable.Range(0, 1024).First(fd => !open.Contains(fd))}");   // the lowest free fd is over the limit
        string maps = File.ReadAllText($"/proc/{target.Pid}/maps");
        HotwireException e = Assert.ThrowsAny<HotwireException>(() => Session.Attach(target.Pid));
        output.WriteLine(e.Message);
        Assert.Contains("Too many open files; the target was left as it was", e.Message);
        Assert.Equal(maps, File.ReadAllText($"/proc/{target.Pid}/maps"));
        Prlimit(target.Pid, "1024");
        using (Session session = Session.Attach(target.Pid))
        {
            session.Register(new CountingOps(["f"]));
            session.Detach();
        }
        Dictionary<string, long> counts = KillTests.Counts(target);
        output.WriteLine(string.Join(", ", counts.Select(kv => $"{kv.Key} {kv.Value}")));
        Assert.Equal(0, counts["eintr"]);
        target.WriteLine("quit");
    }

    private static void Prlimit(int pid, string nofile)
    {
        using var p = System.Diagnostics.Process.Start("prlimit", ["--pid", pid.ToString(), $"--nofile={nofile}:"])!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }

    internal static long Kb(string status, string field) => long.Parse(ProcStatus.Field(status, field)!.Split(' ')[0]);

    /// <summary>What Hotwire has in a process: its mappings (memfd and bootstrap area), fds, and the process's memory.</summary>
    internal readonly record struct Footprint(int HotwireMappings, ulong HotwireBytes, int Fds, long RssShmemKb, long VmRssKb)
    {
        public static Footprint Of(int pid)
        {
            List<MemoryMapping> maps = ProcMaps.Read(pid);
            using var memory = Memory.ProcessMemory.Open(pid);
            List<EarlierBlock> blocks = EarlierBlock.Find(pid, maps, memory);
            var ours = maps.Where(m => m.Path.StartsWith("/memfd:hotwire", StringComparison.Ordinal) || blocks.Any(b => b.BootArea == m.Start)).ToList();
            string status = $"/proc/{pid}/status";
            return new Footprint(ours.Count, (ulong)ours.Sum(m => (long)(m.End - m.Start)), Directory.GetFiles($"/proc/{pid}/fd").Length,
                Kb(status, "RssShmem"), Kb(status, "VmRSS"));
        }
    }
}
