namespace Hotwire.Tests;

/// <summary>record --no-drop: writers wait for room instead of dropping (issue 17).</summary>
[Collection("engine")]
public class NoDropTests(ITestOutputHelper output)
{
    private static readonly Dictionary<string, string> SlowRecorder = new() { ["HOTWIRE_TEST_SLOW_DRAIN_MS"] = "5" };

    [Theory]
    [InlineData("function")]
    [InlineData("function_graph")]
    public void With_a_tiny_buffer_and_a_slow_recorder_no_drop_loses_nothing(string tracer)
    {
        // 4 threads call lib_poly (→ lib_square, lib_add) 5,000 times each into 4 KiB buffers, while
        // the recorder sleeps 5 ms after each pass. By default most events are dropped (and
        // counted); with --no-drop none is, and every call is there.
        CliResult dropping = Record(tracer, noDrop: false, out _);
        Assert.Matches(@" [1-9]\d* lost", dropping.Stderr);
        CliResult waiting = Record(tracer, noDrop: true, out string dir);
        output.WriteLine(waiting.Stderr);
        Assert.Contains(" 0 lost", waiting.Stderr);
        Assert.Matches(@"--no-drop: threads waited [\d.]+ ms", waiting.Stderr);
        Dictionary<string, long> calls = tracer == "function" ? LibraryTests.ReplayCounts(dir) : LibraryTests.ReportCounts(dir);
        Assert.Equal(20_000, calls["lib_poly"]);
        Assert.Equal(20_000, calls["lib_square"]);
        Assert.Equal(20_001, calls["lib_add"]);
    }

    [Fact]
    public async Task Every_event_left_in_a_ring_at_the_end_is_written_however_many()
    {
        // The recorder sleeps 2 s after each pass, so each thread's ring still holds its 150,000
        // events (more than one pass takes from a buffer) when the program exits: the end drains
        // every ring to empty, and every call is in the recording.
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-leftover-{Guid.NewGuid():N}");
        string stderr = await RecordPoly("HOTWIRE_TEST_SLOW_DRAIN_MS", "2000", 50_000, ["-o", dir]);
        Assert.Contains(" 0 lost", stderr);
        Dictionary<string, long> calls = LibraryTests.ReplayCounts(dir);
        Assert.Equal(200_000, calls["lib_poly"]);
        Assert.Equal(200_000, calls["lib_square"]);
        Assert.Equal(200_001, calls["lib_add"]);
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public async Task Events_lost_while_the_disk_held_up_the_recorder_are_said_to_be_the_disk_s()
    {
        // The writer sleeps 500 ms before each write: its blocks fill, the recorder waits for one,
        // the threads' 4 KiB rings fill meanwhile. The summary says the disk was the cause (not the
        // buffer size), and the recording is whole up to where it was cut.
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-slowdisk-{Guid.NewGuid():N}");
        string stderr = await RecordPoly("HOTWIRE_TEST_SLOW_WRITE_MS", "500", 20_000_000, ["--buffer-size", "4K", "-o", dir]);
        Assert.Matches(@"events were lost while writing to .* held the recorder up for \d+ ms .*-o /dev/shm/.*--no-drop", stderr);
        Assert.DoesNotContain("larger --buffer-size", stderr);
        Dictionary<string, long> calls = LibraryTests.ReplayCounts(dir);
        Assert.True(calls["lib_poly"] > 0);
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>`hotwire record OPTIONS -- dlthreads` with one test switch set, its 4 threads calling lib_poly CALLS times each; stderr (exit 0 asserted).</summary>
    private async Task<string> RecordPoly(string testSwitch, string value, int calls, string[] options)
    {
        var psi = HotwireCli.StartInfo(new Dictionary<string, string> { [testSwitch] = value }, ["record", .. options, "--", TargetBuilder.Get(Flavour.DlThreads)]);
        psi.RedirectStandardInput = true;
        using Process p = Process.Start(psi)!;
        p.StandardInput.Write($"load libflav.so lib_poly {calls}\n");
        p.StandardInput.Close();
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = await p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(120_000), "hotwire record did not end");
        await stdout;
        output.WriteLine(stderr);
        Assert.Equal(0, p.ExitCode);
        return stderr;
    }

    private static CliResult Record(string tracer, bool noDrop, out string dir)
    {
        dir = Path.Combine(Path.GetTempPath(), $"hotwire-nodrop-{Guid.NewGuid():N}");
        string input = Path.Combine(Path.GetTempPath(), $"hotwire-nodrop-{Guid.NewGuid():N}.in");
        File.WriteAllText(input, "load libflav.so lib_poly 5000\n");
        string[] mode = noDrop ? ["--no-drop"] : [];
        var psi = HotwireCli.StartInfo(SlowRecorder, ["record", "--tracer", tracer, .. mode, "--buffer-size", "4K", "-o", dir, "--", TargetBuilder.Get(Flavour.DlThreads)]);
        psi.RedirectStandardInput = true;
        using Process p = Process.Start(psi)!;
        p.StandardInput.Write(File.ReadAllText(input));
        p.StandardInput.Close();
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(120_000), "hotwire record did not end");
        var result = new CliResult(p.ExitCode, stdout.GetAwaiter().GetResult(), stderr.GetAwaiter().GetResult());
        Assert.True(result.ExitCode == 0, result.Stderr);
        File.Delete(input);
        return result;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SIGKILL_of_Hotwire_while_writers_wait_leaves_the_target_running_with_its_code(bool waitOnDeadRecorder)
    {
        // The recorder sleeps a second after each pass: the threads fill their 4 KiB buffers at once
        // and wait. Hotwire is killed then: the dead-man switch restores the code and the waiting
        // threads give up waiting (a writer never waits on a dead recorder).
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.DlThreads));
        string exe = File.ReadAllText($"/proc/{target.Pid}/cmdline").Split('\0')[0];
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-nodrop-kill-{Guid.NewGuid():N}");
        var env = new Dictionary<string, string> { ["HOTWIRE_TEST_SLOW_DRAIN_MS"] = "1000" };
        if (waitOnDeadRecorder)
        {
            // Teeth: the writers wait on, for a recorder that is gone. (The dead-man switch also
            // gives the buffers' pages back, which empties them: that is switched off too.)
            env["HOTWIRE_TEST_WAIT_ON_DEAD_RECORDER"] = "1";
            env["HOTWIRE_TEST_NO_DEADMAN_DISCARD"] = "1";
        }
        using (Process recording = HotwireCli.Start(env, "record", "--pid", target.Pid.ToString(), "--no-drop", "--buffer-size", "4K", "-o", dir))
        {
            string? line = recording.StandardError.ReadLine();
            Assert.True(line is not null && line.Contains("recording", StringComparison.Ordinal), line);
            target.WriteLine("load libflav.so lib_poly 200000");
            Thread.Sleep(300);
            recording.Kill();
            recording.WaitForExit();
        }
        string? loaded = target.ReadLine(TimeSpan.FromSeconds(waitOnDeadRecorder ? 5 : 20));
        if (waitOnDeadRecorder)
        {
            Assert.Null(loaded);   // still waiting
            return;
        }
        Assert.StartsWith("loaded ", loaded);
        EarlierAgents.WaitUntilGone(target.Pid, refuseLive: false);
        KillTests.AssertTextEqualsFile(target.Pid, exe, "the program after the kill");
        KillTests.AssertTextEqualsFile(target.Pid, TargetBuilder.LibraryOf(exe), "libflav.so after the kill");
        target.WriteLine("run 1000");
        Assert.StartsWith("ran ", target.ReadLine(TimeSpan.FromSeconds(10)));
        if (Directory.Exists(dir))
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
