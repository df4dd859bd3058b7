using System.Diagnostics;
using Hotwire.Patching;
using Hotwire.Procfs;
using Hotwire.Tests.Infrastructure;
using Xunit;
using Xunit.Abstractions;

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
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (string a in new[] { HotwireCli.DllPath, "record", "--pid", target.Pid.ToString(), "-F", "f", "-o", $"{dir}-{i}" })
            {
                psi.ArgumentList.Add(a);
            }
            if (noDiscard)
            {
                psi.Environment["HOTWIRE_TEST_NO_DEADMAN_DISCARD"] = "1";
            }
            using (Process recording = Process.Start(psi)!)
            {
                string? line = recording.StandardError.ReadLine();          // "recording ..." once the sites are live
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
            // The test-only switch keeps the dead-man switch from giving the pages back: they stay.
            Assert.True(last - first > (kills - 1) * 1024, $"RssShmem grew only from {first} kB to {last} kB");
            return;
        }
        // Each session's buffers are several MB once filled; what stays is each attach's small
        // header, site table and code (about 50 kB here), never a buffer.
        Assert.True(last - first < (kills - 1) * 128, $"RssShmem grew from {first} kB to {last} kB over {kills - 1} killed sessions");
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
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
            psi.ArgumentList.Add(HotwireCli.DllPath);
            foreach (string a in command.Concat(["--pid", target.Pid.ToString()]))
            {
                psi.ArgumentList.Add(a);
            }
            if (command[0] is "record" or "live")
            {
                psi.ArgumentList.Add("-o");
                psi.ArgumentList.Add(Path.Combine(Path.GetTempPath(), $"hotwire-killattach-{Guid.NewGuid():N}"));
            }
            int delay = random.Next(0, 1500);
            using (Process hotwire = Process.Start(psi)!)
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
            Assert.True(Directory.Exists($"/proc/{target.Pid}"), $"trial {trial} ({string.Join(' ', command)}, killed after {delay} ms): the target died");
            Dictionary<string, long> counts = Counts(target);
            Assert.True(counts["f"] > lastCalls, $"trial {trial}: f is no longer called");
            lastCalls = counts["f"];
            Assert.True(counts["eintr"] == 0, $"trial {trial}: {counts["eintr"]} EINTR");
            AssertTextEqualsFile(target.Pid, exe, $"trial {trial} ({string.Join(' ', command)}, killed after {delay} ms)");
            output.WriteLine($"trial {trial}: {string.Join(' ', command)} killed after {delay} ms: target fine");
        }
        CliResult after = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "f", "--duration", "0.2");
        Assert.True(after.ExitCode == 0, after.Stderr);
        target.WriteLine("quit");
    }

    internal static Dictionary<string, long> Counts(TargetProcess target)
    {
        target.WriteLine("counts");
        var counts = new Dictionary<string, long>();
        while (true)
        {
            string? line = target.ReadLine(TimeSpan.FromSeconds(10));
            Assert.True(line is not null, $"pid {target.Pid} did not answer (alive: {Directory.Exists($"/proc/{target.Pid}")})");
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

    private static long RssShmemKb(int pid)
        => long.Parse(ProcStatus.Field($"/proc/{pid}/status", "RssShmem")!.Split(' ')[0]);
}
