using System.Text.RegularExpressions;
using Hotwire.Tracing;

namespace Hotwire.Tests;

/// <summary>Processes with many threads: a buffer for each, under its own tid, and lost counts that add up.</summary>
[Collection("engine")]
public partial class ManyThreadsTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("4M")]
    [InlineData("4K")]   // buffers of 170 events: most calls are lost, and every one is counted
    public void A_thousand_threads_are_each_recorded_under_their_own_tid_and_every_call_is_accounted_for(string bufferSize)
    {
        const int Threads = 1000, PerThread = 2000;
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.ManyThreads), Threads.ToString(), PerThread.ToString());
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-threads-{Guid.NewGuid():N}");
        var clock = Stopwatch.StartNew();
        using Process recording = HotwireCli.Start("record", "--pid", target.Pid.ToString(), "-F", "f", "-o", dir, "--buffer-size", bufferSize);
        recording.StandardOutput.BaseStream.CopyToAsync(Stream.Null);
        Assert.Contains("recording", recording.StandardError.ReadLine());
        output.WriteLine($"attached to {Threads + 1} threads in {clock.ElapsedMilliseconds} ms");
        target.WriteLine("go");
        string? made = target.ReadLine(TimeSpan.FromSeconds(60));
        Assert.NotNull(made);
        long calls = long.Parse(made!["calls ".Length..]);
        Assert.Equal((long)Threads * PerThread, calls);
        Thread.Sleep(300);                                               // the recorder drains the last events
        Assert.Equal(0, Hotwire.Interop.Ptrace.kill(recording.Id, 2 /* SIGINT */));
        Assert.True(recording.WaitForExit(60_000));
        string summary = recording.StandardError.ReadToEnd();
        output.WriteLine(summary);
        Assert.Equal(0, recording.ExitCode);
        Match m = Summary().Match(summary);
        Assert.True(m.Success, summary);
        long events = long.Parse(m.Groups[1].Value), lost = long.Parse(m.Groups[2].Value);
        Assert.Equal(calls, events + lost);                              // the target's own count

        TraceInfo info = TraceData.ReadInfo(dir);
        Assert.Equal(events, info.TotalEvents);
        Assert.Equal((ulong)lost, info.TotalLost);
        Assert.Equal(Threads, info.Threads.Count);
        Assert.Equal(Threads, info.Threads.Select(t => t.Tid).Distinct().Count());
        Assert.All(info.Threads, t => Assert.Equal((ulong)PerThread, (ulong)t.Events + t.Lost));
        var tasks = Directory.GetDirectories($"/proc/{target.Pid}/task").Select(d => int.Parse(Path.GetFileName(d))).ToHashSet();
        Assert.All(info.Threads, t => Assert.Contains(t.Tid, tasks));

        CliResult replay = HotwireCli.Run("replay", "-d", dir, "--tid", info.Threads[0].Tid.ToString());
        Assert.True(replay.ExitCode == 0, replay.Stderr);
        Assert.Contains($"#lost: {lost}", replay.Stdout);
        target.WriteLine("quit");
    }

    [Fact]
    public void Buffers_of_exited_threads_serve_new_ones_so_more_threads_than_buffers_come_and_go_with_nothing_lost()
    {
        // 1,400 threads, 100 at a time, each batch exiting before the next: more threads than the
        // 1,024 buffers reserved; the recorder gives exited threads' buffers back.
        const int Threads = 1400, PerThread = 500;
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.ManyThreads), Threads.ToString(), PerThread.ToString(), "100");
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-churn-{Guid.NewGuid():N}");
        using Process recording = HotwireCli.Start("record", "--pid", target.Pid.ToString(), "-F", "f", "-o", dir);
        recording.StandardOutput.BaseStream.CopyToAsync(Stream.Null);
        Assert.Contains("recording", recording.StandardError.ReadLine());
        target.WriteLine("go");
        string? made = target.ReadLine(TimeSpan.FromSeconds(120));
        Assert.NotNull(made);
        long calls = long.Parse(made!["calls ".Length..]);
        Thread.Sleep(300);
        Assert.Equal(0, Hotwire.Interop.Ptrace.kill(recording.Id, 2 /* SIGINT */));
        Assert.True(recording.WaitForExit(60_000));
        string summary = recording.StandardError.ReadToEnd();
        output.WriteLine(summary);
        Match m = Summary().Match(summary);
        Assert.True(m.Success, summary);
        Assert.Equal(calls, long.Parse(m.Groups[1].Value));              // every call recorded: none lost
        Assert.Equal("0", m.Groups[2].Value);
        TraceInfo info = TraceData.ReadInfo(dir);
        Assert.Equal(Threads, info.Threads.Count);
        Assert.All(info.Threads, t => Assert.Equal(PerThread, t.Events));
        target.WriteLine("quit");
    }

    [GeneratedRegex(@"hotwire: (\d+) events, (\d+) lost, (\d+) threads")]
    private static partial Regex Summary();
}
