namespace Hotwire.Tests;

/// <summary>A target in a state Hotwire must not work on blindly: held by another Hotwire, stopped, or replaced by exec.</summary>
[Collection("engine")]
public class TargetStateTests
{
    [Fact]
    public void A_second_hotwire_is_refused_before_it_touches_the_process_and_names_the_first()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 2);
        target.Go();
        using Process first = HotwireCli.Start("count", "--pid", target.Pid.ToString(), "-F", "f");
        Assert.Contains("counting", first.StandardError.ReadLine());
        string mapsBefore = File.ReadAllText($"/proc/{target.Pid}/maps");
        CliResult second = HotwireCli.Run("record", "--pid", target.Pid.ToString(), "-F", "f", "-o", TempDir());
        Assert.Equal(1, second.ExitCode);
        Assert.Contains($"pid {target.Pid} is already traced or patched by Hotwire pid {first.Id}", second.Stderr);
        Assert.Single(second.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(mapsBefore, File.ReadAllText($"/proc/{target.Pid}/maps"));   // no second agent, no mapping
        Assert.Single(Hotwire.Patching.EarlierAgents.AgentThreads(target.Pid));
        first.Kill();
        first.WaitForExit();
        // Once the first is gone (its agent restores and exits), the next one attaches.
        CliResult third = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "f", "--duration", "0.2");
        Assert.True(third.ExitCode == 0, third.Stderr);
    }

    [Fact]
    public void A_stopped_target_is_refused_at_once_with_what_to_do()
    {
        using var target = new SeedTarget(Flavour.SeedNop5, threads: 1);
        Assert.Equal(0, Hotwire.Interop.Ptrace.kill(target.Pid, 19 /* SIGSTOP */));
        try
        {
            Thread.Sleep(50);
            var clock = Stopwatch.StartNew();
            CliResult r = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "f", "--duration", "0.2");
            Assert.Equal(1, r.ExitCode);
            Assert.Contains($"pid {target.Pid} is stopped (SIGSTOP or job control)", r.Stderr);
            Assert.Contains($"kill -CONT {target.Pid}", r.Stderr);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"took {clock.Elapsed}");
            Assert.DoesNotContain("memfd:hotwire", File.ReadAllText($"/proc/{target.Pid}/maps"));
        }
        finally
        {
            Hotwire.Interop.Ptrace.kill(target.Pid, 18 /* SIGCONT */);
        }
    }

    [Theory]
    [InlineData("record")]
    [InlineData("count")]
    public void An_attached_process_that_executes_another_program_ends_the_session_and_says_so(string command)
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Execer));
        string[] args = command == "record"
            ? ["record", "--pid", target.Pid.ToString(), "-F", "f", "-o", TempDir()]
            : ["count", "--pid", target.Pid.ToString(), "-F", "f"];
        using Process hotwire = HotwireCli.Start(args);
        Assert.Contains(command == "record" ? "recording" : "counting", hotwire.StandardError.ReadLine());
        Thread.Sleep(100);
        target.WriteLine("exec");
        Assert.True(hotwire.WaitForExit(10_000), $"hotwire {command} did not notice the exec");
        string stderr = hotwire.StandardError.ReadToEnd();
        Assert.Equal(0, hotwire.ExitCode);
        Assert.Contains($"pid {target.Pid} executed a new program", stderr);
        Assert.Contains("sleep", File.ReadAllText($"/proc/{target.Pid}/comm"));   // the new program runs on
        if (command == "count")
        {
            Assert.Matches(@"\b[1-9]\d*\s+f\b", hotwire.StandardOutput.ReadToEnd()); // the calls before the exec
        }
    }

    private static string TempDir() => Path.Combine(Path.GetTempPath(), $"hotwire-state-{Guid.NewGuid():N}");
}
