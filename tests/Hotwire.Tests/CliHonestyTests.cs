namespace Hotwire.Tests;

/// <summary>
/// What an adversarial user found: every bad option is one line that says what is wrong, with the
/// right exit code, and is caught before Hotwire touches the target.
/// </summary>
public class CliHonestyTests
{
    [Theory]
    [InlineData("record", "NaN", "is not a time")]
    [InlineData("record", "Infinity", "is longer than a year")]
    [InlineData("live", "1e300", "is longer than a year")]
    [InlineData("count", "-5", "is not a positive time")]
    [InlineData("count", "0", "is not a positive time")]
    [InlineData("record", "2x", "is not a time (examples: 30 (seconds), 1.5, 500ms, 2m)")]
    public void A_duration_that_is_not_a_sane_time_is_refused_before_attaching(string command, string duration, string message)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        string dir = TempDir();
        string[] output = command == "count" ? [] : ["-o", dir];
        CliResult r = HotwireCli.Run([command, "--duration", duration, .. output, "--pid", target.Pid.ToString()]);
        AssertOneLineError(r, 2, $"--duration: '{duration}' {message}");
        AssertUntouched(target.Pid);
        Assert.False(Directory.Exists(dir));
    }

    [Fact]
    public void Wait_quiescent_takes_seconds_like_duration()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        AssertOneLineError(HotwireCli.Run("patch", "--pid", target.Pid.ToString(), "--wait-quiescent=NaN", TargetBuilder.Patch("napfix")), 2, "--wait-quiescent: 'NaN' is not a time");
        AssertOneLineError(HotwireCli.Run("patch", "--pid", target.Pid.ToString(), "--wait-quiescent=1e300", TargetBuilder.Patch("napfix")), 2, "--wait-quiescent: '1e300' is longer than a year");
        AssertUntouched(target.Pid);
        Assert.Contains("seconds", HotwireCli.Run("patch", "--help").Stdout.Split('\n').Single(l => l.Contains("--wait-quiescent")));
    }

    [Fact]
    public void Wait_quiescent_10_waits_up_to_10_seconds_not_10_ns()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Graph), "hold", "1", "1500");
        Thread.Sleep(50); // inside the 1.5 s nap
        var clock = Stopwatch.StartNew();
        CliResult r = HotwireCli.Run("patch", "--pid", target.Pid.ToString(), "--wait-quiescent=10", TargetBuilder.Patch("napfix"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("quiescent: no thread", r.Stderr);
        Assert.True(clock.Elapsed > TimeSpan.FromSeconds(1), $"took {clock.Elapsed}: it should have waited for the nap to end");
    }

    [Theory]
    [InlineData("record", "--pid", "x", "--pid: 'x' is not a whole number")]
    [InlineData("ls", "--pid", "x", "--pid: 'x' is not a whole number")]
    [InlineData("record", "--pid", "0", "--pid: '0' is not a process id")]
    [InlineData("count", "--top", "1.5", "--top: '1.5' is not a whole number")]
    [InlineData("record", "--args", "two", "--args: 'two' is not a whole number")]
    [InlineData("record", "--depth", "x", "--depth: 'x' is not a whole number")]
    public void A_value_of_the_wrong_kind_is_named_in_words_not_dotnet_types(string command, string option, string value, string message)
    {
        CliResult r = HotwireCli.Run(command, option, value, "--", TargetBuilder.Get(Flavour.Nop5));
        AssertOneLineError(r, 2, message);
        Assert.DoesNotContain("System.", r.Stderr);
    }

    [Fact]
    public void An_unknown_option_is_named_wherever_it_is_and_what_follows_double_dash_is_the_programs()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        AssertOneLineError(HotwireCli.Run("record", "--bogus", "--", TargetBuilder.Get(Flavour.Nop5)), 2, "unknown option --bogus");
        AssertOneLineError(HotwireCli.Run("record", "--pid", target.Pid.ToString(), "--bogus"), 2, "unknown option --bogus");
        AssertOneLineError(HotwireCli.Run("count", "-x", "--pid", target.Pid.ToString()), 2, "unknown option -x");
        AssertOneLineError(HotwireCli.Run("replay", "--bogus"), 2, "unknown option --bogus");
        AssertUntouched(target.Pid);

        // After --, a dash is the program's: calls.c's "tree" mode ignores what follows it.
        string dir = TempDir();
        CliResult traced = HotwireCli.Run("record", "-F", "a", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree", "--bogus");
        Assert.True(traced.ExitCode == 0, traced.Stderr);
        Assert.Contains("the program exited with status 0", traced.Stderr);
    }

    [Theory]
    [InlineData("--buffer-size", "3K", "--buffer-size must be a power of two of at least 4K, not 3072")]
    [InlineData("--args", "7", "--args takes 0 to 6 (the integer argument registers), not 7")]
    public void A_bad_option_value_checked_by_the_engine_is_still_a_usage_error(string option, string value, string message)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        AssertOneLineError(HotwireCli.Run("record", option, value, "-o", TempDir(), "--pid", target.Pid.ToString()), 2, message);
        AssertUntouched(target.Pid);
    }

    [Fact]
    public void A_tid_the_process_does_not_have_is_refused_before_attaching()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        int pid = target.Pid;
        string dir = TempDir();
        CliResult r = HotwireCli.Run("record", "--tid", $"{pid},999999", "-o", dir, "--pid", pid.ToString());
        AssertOneLineError(r, 1, $"--tid 999999: pid {pid} has no thread 999999 (its threads are the entries of /proc/{pid}/task)");
        AssertUntouched(pid);
        Assert.False(Directory.Exists(dir));
    }

    [Theory]
    [InlineData(new[] { "-F", "!*" }, "no traceable function matches '!*'; `hotwire ls` lists the functions that can be traced")]
    [InlineData(new[] { "-N", "*" }, "no traceable function matches '!*'")]
    [InlineData(new[] { "-F", "compute", "-N", "compute" }, "no traceable function matches 'compute' and '!compute' together")]
    public void Filters_that_together_match_nothing_are_refused_before_attaching(string[] filters, string message)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        AssertOneLineError(HotwireCli.Run(["record", .. filters, "-o", TempDir(), "--pid", target.Pid.ToString()]), 1, message);
        AssertOneLineError(HotwireCli.Run(["count", .. filters, "--pid", target.Pid.ToString()]), 1, message);
        AssertUntouched(target.Pid);

        string dir = TempDir();
        AssertOneLineError(HotwireCli.Run(["record", .. filters, "-o", dir, "--", TargetBuilder.Get(Flavour.Nop5)]), 1, message);
        Assert.False(Directory.Exists(dir));
    }

    [Fact]
    public void Recording_over_a_recording_needs_force()
    {
        string dir = TempDir();
        string[] record = ["record", "-F", "a", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree"];
        Assert.Equal(0, HotwireCli.Run(record).ExitCode);
        byte[] info = File.ReadAllBytes(Path.Combine(dir, "info.json"));
        byte[] events = File.ReadAllBytes(Path.Combine(dir, "events.bin"));

        AssertOneLineError(HotwireCli.Run(record), 1, $"{dir} already holds a recording; remove it, choose another -o, or pass --force");
        Assert.Equal(info, File.ReadAllBytes(Path.Combine(dir, "info.json")));
        Assert.Equal(events, File.ReadAllBytes(Path.Combine(dir, "events.bin")));
        using (TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5)))
        {
            AssertOneLineError(HotwireCli.Run("live", "-o", dir, "--pid", target.Pid.ToString()), 1, "already holds a recording");
            AssertUntouched(target.Pid);
        }

        CliResult forced = HotwireCli.Run([.. record[..^3], "--force", .. record[^3..]]);
        Assert.True(forced.ExitCode == 0, forced.Stderr);
        Assert.NotEqual(info, File.ReadAllBytes(Path.Combine(dir, "info.json")));
    }

    [Theory]
    [InlineData("function")]
    [InlineData("function_graph")]
    public void Replaying_a_recording_without_events_warns_in_one_line(string tracer)
    {
        string dir = TempDir();
        Assert.Equal(0, HotwireCli.Run("record", "--tracer", tracer, "-F", "a", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree").ExitCode);
        File.WriteAllBytes(Path.Combine(dir, "events.bin"), []);
        CliResult r = HotwireCli.Run("replay", "-d", dir);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal($"hotwire: warning: {dir} holds no events: nothing traced was called while it was recording", r.Stderr.Trim());
    }

    [Theory]
    [InlineData("record", 2)]  // SIGINT, as Ctrl-C
    [InlineData("count", 15)]  // SIGTERM
    public void A_signal_before_attach_means_no_attach(string command, int signal)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        string dir = TempDir();
        string[] output = command == "count" ? [] : ["-o", dir];
        (int exit, string stderr) = SignalWhilePausedBeforeAttach(signal, [command, .. output, "--pid", target.Pid.ToString()]);
        Assert.Equal(130, exit);
        Assert.Contains($"hotwire: interrupted before attaching: pid {target.Pid} was not touched", stderr);
        Assert.True(Directory.Exists($"/proc/{target.Pid}"), "the target must live on");
        AssertUntouched(target.Pid);
        Assert.False(Directory.Exists(dir));
    }

    [Fact]
    public void A_signal_before_launch_means_no_program()
    {
        string dir = TempDir();
        (int exit, string stderr) = SignalWhilePausedBeforeAttach(2, ["record", "-o", dir, "--", TargetBuilder.Get(Flavour.Calls), "tree"]);
        Assert.Equal(130, exit);
        Assert.Contains("hotwire: interrupted before starting", stderr);
        Assert.False(Directory.Exists(dir));
    }

    // Main registers the handlers first (the kernel shows them in SigCgt); a signal from then on, while
    // the command line is still being read, is Hotwire's to answer. The pause before attach only keeps
    // attach from overtaking the signal on a loaded machine.
    [Theory]
    [InlineData(2)]  // SIGINT
    [InlineData(15)] // SIGTERM
    public async Task A_signal_as_soon_as_hotwire_has_started_gets_its_own_message_and_status(int signal)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        string dir = TempDir();
        using Process hotwire = HotwireCli.Start(new Dictionary<string, string> { ["HOTWIRE_TEST_PAUSE_BEFORE_ATTACH_MS"] = "60000" },
            "record", "-o", dir, "--pid", target.Pid.ToString());
        Task<string> stdout = hotwire.StandardOutput.ReadToEndAsync();
        Task<string> stderr = hotwire.StandardError.ReadToEndAsync();
        var clock = Stopwatch.StartNew();
        while (!Catches(hotwire.Id, signal))
        {
            Assert.False(hotwire.HasExited, "hotwire exited before it handled signals");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), "hotwire never registered its signal handlers");
            Thread.Yield();
        }
        Assert.Equal(0, Kill(hotwire.Id, signal));
        Assert.True(hotwire.WaitForExit(TimeSpan.FromSeconds(20)), "hotwire did not stop on the signal");
        string[] lines = (await stderr).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(130, hotwire.ExitCode); // death by SIGTERM would be 143; by SIGINT, 130 without a message
        Assert.Equal($"hotwire: interrupted before attaching: pid {target.Pid} was not touched", lines[^1]);
        Assert.All(lines[..^1], l => Assert.StartsWith("hotwire: test: pausing", l));
        Assert.Equal("", await stdout);
        AssertUntouched(target.Pid);
        Assert.False(Directory.Exists(dir));
    }

    private static bool Catches(int pid, int signal)
    {
        string? caught;
        try
        {
            caught = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("SigCgt:", StringComparison.Ordinal));
        }
        catch (IOException)
        {
            return false; // gone: the caller says so
        }
        return caught is not null && (Convert.ToUInt64(caught["SigCgt:".Length..].Trim(), 16) & (1UL << (signal - 1))) != 0;
    }

    // The test-only pause gives the signal a window before attach that does not depend on timing.
    private static (int Exit, string Stderr) SignalWhilePausedBeforeAttach(int signal, string[] args)
    {
        using Process hotwire = HotwireCli.Start(new Dictionary<string, string> { ["HOTWIRE_TEST_PAUSE_BEFORE_ATTACH_MS"] = "60000" }, args);
        Task<string> stdout = hotwire.StandardOutput.ReadToEndAsync();
        string? first = hotwire.StandardError.ReadLine();
        Assert.True(first is not null && first.StartsWith("hotwire: test: pausing", StringComparison.Ordinal), first);
        Assert.Equal(0, Kill(hotwire.Id, signal));
        string rest = hotwire.StandardError.ReadToEnd();
        Assert.True(hotwire.WaitForExit(TimeSpan.FromSeconds(20)), "hotwire did not stop on the signal");
        Assert.Equal("", stdout.Result);
        Assert.Single(rest.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        return (hotwire.ExitCode, rest);
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
    private static extern int Kill(int pid, int sig);

    internal static void AssertOneLineError(CliResult r, int code, string expected)
    {
        string[] lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got: {r.Stderr}");
        Assert.StartsWith("hotwire: ", lines[0]);
        Assert.Contains(expected, lines[0]);
        Assert.Equal(code, r.ExitCode);
    }

    /// <summary>Hotwire never attached: no tracer, no agent mapping.</summary>
    internal static void AssertUntouched(int pid)
    {
        Assert.DoesNotContain("hotwire", File.ReadAllText($"/proc/{pid}/maps"));
        Assert.Contains("TracerPid:\t0", File.ReadAllText($"/proc/{pid}/status"));
    }

    private static string TempDir() => Path.Combine(Path.GetTempPath(), $"hotwire-honesty-{Guid.NewGuid():N}");
}
