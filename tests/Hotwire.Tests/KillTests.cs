using Hotwire.Agent;
using Hotwire.Procfs;

namespace Hotwire.Tests;

/// <summary>Hotwire killed while it traces: the target runs on restored, and keeps no memory of Hotwire's buffers.</summary>
[Collection("engine")]
public class KillTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(false, 20)]
    [InlineData(true, 3)]
    public void SIGKILLed_recordings_leave_no_trace_buffers_resident_in_the_target(bool noDiscard, int kills)
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 2);
        target.Go();
        long first = 0;
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-kill-{Guid.NewGuid():N}");
        for (int i = 0; i < kills; i++)
        {
            var env = new Dictionary<string, string>();
            if (noDiscard)
            {
                env["HOTWIRE_TEST_NO_DEADMAN_DISCARD"] = "1";
            }
            using (Process recording = HotwireCli.Start(env, "record", "--pid", target.Pid.ToString(), "-F", "f", "-o", $"{dir}-{i}"))
            {
                string? line = recording.StandardError.ReadLine();          // "recording ..." once the sites are live
                while (line is not null && !line.Contains("recording", StringComparison.Ordinal))
                {
                    output.WriteLine($"kill {i + 1}: {line}");                  // a note, e.g. that a new block was made
                    line = recording.StandardError.ReadLine();
                }
                Assert.True(line?.Contains("recording", StringComparison.Ordinal), line);
                Thread.Sleep(300);                                           // the buffers fill (several MB resident)
                recording.Kill();
                recording.WaitForExit();
            }
            EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);    // the dead-man switch ran
            long shmem = RssShmemKb(target.Pid);
            output.WriteLine($"kill {i + 1}: RssShmem {shmem} kB");
            if (i == 0)
            {
                first = shmem;
            }
            Directory.Delete($"{dir}-{i}", recursive: true);
        }
        long last = RssShmemKb(target.Pid);
        if (noDiscard)
        {
            // The test-only switch keeps the dead-man switch from giving the pages back: a killed
            // session's filled buffers stay resident (until a later session takes the block over).
            Assert.True(first > 1024, $"RssShmem after a kill was only {first} kB");
            return;
        }
        // Each session's buffers are several MB once filled; each later session takes the first
        // one's block over, so RssShmem comes back to its level after the first kill (give or
        // take the few pages of code and tables a session touched before it was killed).
        Assert.True(first < 1024, $"RssShmem after a kill was {first} kB: the buffers stayed resident");
        Assert.True(last <= first + 16, $"RssShmem grew from {first} kB to {last} kB over {kills - 1} killed sessions");
        Session check = Session.Attach(target.Pid);   // a new attach works, and finds the original code
        check.Detach();
        EngineTests.AssertOriginalBytes(target.Pid, check);
        (long old0, _, _) = target.Counts();
        Thread.Sleep(20);
        Assert.True(target.Counts().Old > old0, "the target's threads still call f");
    }

    [Fact]
    public void SIGKILL_at_random_moments_of_attach_and_tracing_never_harms_the_target()
    {
        // 40 trials (HOTWIRE_KILL_TRIALS=100 tests/stress/kill-attach runs 100): a tracing command is killed 0-1.5 s after
        // it starts — before, during or after attach. The target (threads busy in f, in nanosleep,
        // epoll_wait, sigwaitinfo, semop, recv, reading stdin...) must survive each one, keep
        // calling f, see no EINTR, hold its original code, and take a new attach.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Waiters));
        string exe = File.ReadAllText($"/proc/{target.Pid}/cmdline").Split('\0')[0];
        var random = new Random(16);
        string[][] commands =
        [
            ["record", "-F", "f"], ["record", "--tracer", "function_graph", "-F", "f"], ["count", "-F", "f"], ["live", "-F", "f"],
        ];
        long lastCalls = 0;
        int trials = int.TryParse(Environment.GetEnvironmentVariable("HOTWIRE_KILL_TRIALS"), out int n) ? n : 40;
        for (int trial = 0; trial < trials; trial++)
        {
            string[] command = commands[trial % commands.Length];
            string[] args = [.. command, "--pid", target.Pid.ToString()];
            // Up to 400 MB per recording: each is removed after its trial.
            string recording = Path.Combine(Path.GetTempPath(), $"hotwire-killattach-{Guid.NewGuid():N}");
            if (command[0] is "record" or "live")
            {
                args = [.. args, "-o", recording];
            }
            int delay = random.Next(0, 1500);
            using (Process hotwire = HotwireCli.Start(args))
            {
                hotwire.StandardOutput.BaseStream.CopyToAsync(Stream.Null);
                hotwire.StandardError.BaseStream.CopyToAsync(Stream.Null);
                Thread.Sleep(delay);
                try
                {
                    hotwire.Kill();
                }
                catch (InvalidOperationException)
                {
                }
                hotwire.WaitForExit();
            }
            EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);
            if (target.Process.HasExited)
            {
                Assert.Fail($"trial {trial} ({string.Join(' ', command)}, killed after {delay} ms): the target died ({target.Fate()})");
            }
            Dictionary<string, long> counts = Counts(target, $"trial {trial} ({string.Join(' ', command)}, killed after {delay} ms): ");
            Assert.True(counts["f"] > lastCalls, $"trial {trial}: f is no longer called");
            lastCalls = counts["f"];
            Assert.True(counts["eintr"] == 0, $"trial {trial}: {counts["eintr"]} EINTR");
            AssertTextEqualsFile(target.Pid, exe, $"trial {trial} ({string.Join(' ', command)}, killed after {delay} ms)");
            if (Directory.Exists(recording))
            {
                Directory.Delete(recording, recursive: true);
            }
            output.WriteLine($"trial {trial}: {string.Join(' ', command)} killed after {delay} ms: target fine");
        }
        CliResult after = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "f", "--duration", "0.2");
        Assert.True(after.ExitCode == 0, after.Stderr);
        target.WriteLine("quit");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_child_forked_while_tracing_gets_its_code_back_when_Hotwire_is_SIGKILLed(bool noGuard)
    {
        // The target forks a child that calls f every millisecond for 1.5 s, while f is traced. The
        // child has no agent; Hotwire's fork guard restores it once Hotwire is gone. Teeth:
        // HOTWIRE_TEST_NO_FORK_GUARD leaves the child with Hotwire's call in f.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Forker));
        string exe = File.ReadAllText($"/proc/{target.Pid}/cmdline").Split('\0')[0];
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-kill-fork-{Guid.NewGuid():N}");
        var env = new Dictionary<string, string>();
        if (noGuard)
        {
            env["HOTWIRE_TEST_NO_FORK_GUARD"] = "1";
        }
        int child;
        using (Process recording = HotwireCli.Start(env, "record", "--pid", target.Pid.ToString(), "-F", "f", "-o", dir))
        {
            string? line = recording.StandardError.ReadLine();
            Assert.True(line is not null && line.Contains("recording", StringComparison.Ordinal), line);
            target.WriteLine("fork");
            string? forked = target.ReadLine(TimeSpan.FromSeconds(10));
            Assert.StartsWith("forked ", forked);
            child = int.Parse(forked!.Split(' ')[1]);
            Thread.Sleep(100);
            Assert.ThrowsAny<Exception>(() => AssertTextEqualsFile(child, exe, "the child while traced"));
            recording.Kill();
            recording.WaitForExit();
        }
        EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);
        AssertTextEqualsFile(target.Pid, exe, "the target after the kill");
        try
        {
            var clock = Stopwatch.StartNew();
            while (true)
            {
                try
                {
                    AssertTextEqualsFile(child, exe, "the child after the kill");
                    Assert.False(noGuard, "the child got its code back without the fork guard");
                    output.WriteLine($"child {child} restored {clock.ElapsedMilliseconds} ms after the kill was seen");
                    break;
                }
                catch (Xunit.Sdk.XunitException) when (clock.ElapsedMilliseconds < 800)
                {
                    Thread.Sleep(10);
                }
                catch (Xunit.Sdk.XunitException) when (noGuard)
                {
                    output.WriteLine($"without the guard, child {child} still runs Hotwire's call in f");
                    break;
                }
            }
            Assert.True(Directory.Exists($"/proc/{child}"), "the child died");
            target.WriteLine("wait");
            Assert.Equal("child exited 0", target.ReadLine(TimeSpan.FromSeconds(10)));
        }
        finally
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }

    internal static Dictionary<string, long> Counts(TargetProcess target, string when = "")
    {
        target.WriteLine("counts");
        var counts = new Dictionary<string, long>();
        while (true)
        {
            string? line = target.ReadLine(TimeSpan.FromSeconds(10));
            if (line is null)
            {
                Assert.Fail($"{when}pid {target.Pid} did not answer ({target.Fate()})");
            }
            if (line == "end")
            {
                return counts;
            }
            string[] words = line.Split(' ');
            counts[words[0]] = long.Parse(words[1]);
        }
    }

    // The executable's code in memory is byte for byte its file: nothing of Hotwire's is left in it.
    internal static void AssertTextEqualsFile(int pid, string exe, string what)
    {
        using var memory = Hotwire.Memory.ProcessMemory.Open(pid);
        byte[] file = File.ReadAllBytes(exe);
        foreach (MemoryMapping m in ProcMaps.Read(pid).Where(m => m.IsExecutable && m.Path == exe))
        {
            var live = new byte[Math.Min(m.End - m.Start, (ulong)file.Length - m.Offset)];
            Assert.True(memory.TryRead(m.Start, live), what);
            Assert.True(live.AsSpan().SequenceEqual(file.AsSpan((int)m.Offset, live.Length)), $"{what}: the code differs from {exe}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Hotwire_killed_while_a_sled_is_converted_leaves_a_thread_parked_inside_the_sled_unharmed(bool deathFinishesBatch)
    {
        // A signal handler parks a thread with its saved PC at byte 1 of f's 5-NOP sled. Hotwire
        // (record) pauses the first batch to move it out, and dies right there (test-only switch).
        // The agent must not write the sled's tail under that thread: it puts byte 0 back instead
        // (verify/patch.pml found this; variant death-finishes-sled). The other switch restores the
        // old behaviour, which rewrites the tail while the thread's saved PC is inside.
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.SigSled));
        Assert.Equal("1", target.ReadyWords[2]);
        ulong f = Convert.ToUInt64(target.ReadyWords[3], 16);
        byte[] sled = [0x90, 0x90, 0x90, 0x90, 0x90];
        Assert.Equal(sled, ReadBytes(target.Pid, f, 5));
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-kill-sled-{Guid.NewGuid():N}");
        var env = new Dictionary<string, string> { ["HOTWIRE_TEST_DIE_IN_SLED_PAUSE"] = "1" };
        if (deathFinishesBatch)
        {
            env["HOTWIRE_TEST_DEATH_FINISHES_BATCH"] = "1";
        }
        using (Process recording = HotwireCli.Start(env, "record", "--pid", target.Pid.ToString(), "-F", "f", "-o", dir))
        {
            Assert.True(recording.WaitForExit(30_000), "hotwire record did not die in the sled pause");
            Assert.Equal(128 + 9, recording.ExitCode);
        }
        EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);   // the dead-man switch ran
        // The agent's membarrier count tells what it did: int3 + sync, then either byte 0 back + sync
        // (2), or tails + sync, heads + sync (3); then the dead-man switch's restore: the dynamic
        // linker's rendezvous byte (1), and the restore batch (3, even when, as after the abort, no
        // site needs restoring).
        ulong syncs = AgentSyncCount(target.Pid);
        output.WriteLine($"f {Convert.ToHexString(ReadBytes(target.Pid, f, 5))}, agent syncs {syncs}");
        if (Directory.Exists(dir))
        {
            Directory.Delete(dir, recursive: true);
        }
        if (deathFinishesBatch)
        {
            Assert.Equal(7UL, syncs); // the tail was rewritten while the thread's saved PC was inside the sled
            return;
        }
        Assert.Equal(6UL, syncs);
        Assert.Equal(sled, ReadBytes(target.Pid, f, 5));
        target.WriteLine("go");
        string? calls = target.ReadLine(TimeSpan.FromSeconds(10));
        string? done = target.ReadLine(TimeSpan.FromSeconds(10));
        Assert.True(target.Process.WaitForExit(10_000));
        Assert.StartsWith("calls ", calls);
        Assert.Equal("done", done);
        Assert.Equal(0, target.Process.ExitCode);
    }

    private static byte[] ReadBytes(int pid, ulong address, int count)
    {
        using var mem = new FileStream($"/proc/{pid}/mem", FileMode.Open, FileAccess.Read);
        mem.Position = (long)address;
        var bytes = new byte[count];
        mem.ReadExactly(bytes);
        return bytes;
    }

    private static ulong AgentSyncCount(int pid)
    {
        using var memory = Hotwire.Memory.ProcessMemory.Open(pid);
        var header = new byte[AgentLayout.SyncCount + 8];
        MemoryMapping m = ProcMaps.Read(pid).Single(m => m.Offset == 0 && m.Path.StartsWith("/memfd:hotwire (deleted)", StringComparison.Ordinal));
        Assert.True(memory.TryRead(m.Start, header));
        Assert.Equal(AgentLayout.Magic, BitConverter.ToUInt64(header));
        return BitConverter.ToUInt64(header, AgentLayout.SyncCount);
    }

    private static long RssShmemKb(int pid) => BlockReuseTests.Kb($"/proc/{pid}/status", "RssShmem");
}
