using Hotwire.Procfs;

namespace Hotwire.Tests;

/// <summary>`hotwire count` run as a user would, and what happens to the target when Hotwire dies.</summary>
[Collection("engine")]
public class CountCommandTests
{
    [Fact]
    public void A_program_hotwire_starts_is_counted_from_its_first_instruction()
    {
        CliResult tree = HotwireCli.Run("count", "-F", "[abcd]", "--", TargetBuilder.Get(Flavour.Calls), "tree");
        Assert.True(tree.ExitCode == 0, tree.Stderr);
        Assert.Contains("the program exited with status 0", tree.Stderr);
        var counts = tree.Lines.Where(l => !l.StartsWith('#')).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToDictionary(f => f[1], f => long.Parse(f[0]));
        Assert.Equal(10, counts["a"]);                                  // two threads × 5, right from the start
        Assert.Equal(1, counts["d"]);
    }

    [Fact]
    public void Count_of_a_launched_program_counts_from_its_first_call_and_reports_its_exit()
    {
        string prog = TargetBuilder.Get(Flavour.Blocker);
        CliResult result = HotwireCli.Run("count", "-F", "report", "--", prog, "nanosleep");
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Contains("           1  report [prog]", result.Stdout);
        Assert.Contains("the program exited with status 0", result.Stderr);
    }

    [Fact]
    public void Count_attached_for_a_duration_detaches_and_the_target_runs_on_with_original_code()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Many));
        CliResult result = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "f1????", "-N", "f19*", "--duration", "1", "--top", "3");
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Contains("counting calls of 9000 functions", result.Stderr);
        Assert.Equal(4, result.Lines.Length);
        Assert.DoesNotContain(result.Lines, l => l.Contains(" f19", StringComparison.Ordinal));
        AssertAllSitesOriginal(target.Pid);
        Assert.False(target.Process.HasExited);
    }

    [Fact]
    public void A_trampoline_region_that_fills_up_is_followed_by_another_near_its_module()
    {
        // Regions of 64 KiB hold about 200 six-argument trampolines: 10,000 sites need about 50 of
        // them, mapped one after another as each fills (without that: "trampoline space near this
        // module is exhausted").
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Many10kPie), "idle");
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-regions-{Guid.NewGuid():N}");
        CliResult result = HotwireCli.Run(new Dictionary<string, string> { ["HOTWIRE_TEST_REGION_BYTES"] = "65536" },
            "record", "--pid", target.Pid.ToString(), "-F", "*", "--args", "6", "--duration", "0.5", "-o", dir);
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Matches(@"recording 1000\d functions", result.Stderr);
        AssertAllSitesOriginal(target.Pid);
        Assert.False(target.Process.HasExited);
        Directory.Delete(dir, recursive: true);
    }

    [Theory]
    [InlineData(Flavour.Many, @"recording 5000\d functions")]          // f0..f49999, main, spin (NOP5)
    [InlineData(Flavour.Many10kPie, @"recording 1000\d functions")]    // the same, 10,000 of them, PIE with NOP sleds
    public void Recording_every_function_of_a_many_function_program_with_six_arguments_fits(Flavour flavour, string recording)
    {
        // Trampolines with six arguments are the largest the function tracer makes: every site
        // gets one, in the region near its module (it once ran out of room near 3,500 sites).
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(flavour), "idle");
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-many-{Guid.NewGuid():N}");
        CliResult result = HotwireCli.Run("record", "--pid", target.Pid.ToString(), "-F", "*", "--args", "6", "--duration", "0.5", "-o", dir);
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Matches(recording, result.Stderr);
        AssertAllSitesOriginal(target.Pid);
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void SIGKILL_of_hotwire_with_10000_sites_enabled_leaves_the_target_running_with_original_code()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Many));
        using Process hotwire = HotwireCli.Start("count", "--pid", target.Pid.ToString(), "-F", "f1????");
        string? line = hotwire.StandardError.ReadLine();
        Assert.Equal($"hotwire: counting calls of 10000 functions in pid {target.Pid}; Ctrl-C to stop", line);
        Assert.NotEqual(OriginalSiteCount(target.Pid), ProcessImage.Load(target.Pid).AllSites.Count());
        hotwire.Kill(); // SIGKILL: no cleanup runs in Hotwire
        hotwire.WaitForExit();
        var deadline = Stopwatch.StartNew();
        int total = ProcessImage.Load(target.Pid).AllSites.Count();
        while (OriginalSiteCount(target.Pid) != total && deadline.ElapsedMilliseconds < 5000)
        {
            Thread.Sleep(20);
        }
        AssertAllSitesOriginal(target.Pid);
        Assert.DoesNotContain(Directory.GetDirectories($"/proc/{target.Pid}/task"), t => File.ReadAllText(Path.Combine(t, "comm")).Trim() == "hotwire-agent");
        long rounds0 = Rounds(target.Pid);
        Thread.Sleep(100);
        Assert.True(Rounds(target.Pid) > rounds0, "the target's threads stopped making progress");
    }

    [Fact]
    public void Count_without_a_target_is_a_usage_error()
    {
        CliResult result = HotwireCli.Run("count");
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("say what to trace: --pid N for a running process, or -- PROGRAM", result.Stderr);
    }

    [Fact]
    public void Count_of_a_program_that_does_not_exist()
    {
        CliResult result = HotwireCli.Run("count", "--", "/nonexistent/prog");
        Assert.Equal(1, result.ExitCode);
        Assert.Equal("hotwire: /nonexistent/prog: program not found\n", result.Stderr);
    }

    [Fact]
    public void Count_with_a_filter_that_matches_nothing_leaves_the_target_untouched()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        CliResult result = HotwireCli.Run("count", "--pid", target.Pid.ToString(), "-F", "compte");
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("no traceable function matches 'compte'; near names: compute", result.Stderr);
        Assert.DoesNotContain(Directory.GetDirectories($"/proc/{target.Pid}/task"), t => File.ReadAllText(Path.Combine(t, "comm")).Trim() == "hotwire-agent");
    }

    [Fact]
    public void Count_without_ptrace_permission_names_what_is_missing()
    {
        using TargetProcess target = TargetProcess.Start(TargetBuilder.Get(Flavour.Nop5));
        var psi = new ProcessStartInfo("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
            HotwireCli.ExecutablePath, "count", "--pid", target.Pid.ToString()])
        { RedirectStandardError = true, RedirectStandardOutput = true };
        using Process p = Process.Start(psi)!;
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(1, p.ExitCode);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("CAP_SYS_PTRACE", stderr);
    }

    private static int OriginalSiteCount(int pid)
    {
        ProcessImage image = ProcessImage.Load(pid);
        using var memory = Hotwire.Memory.ProcessMemory.Open(pid);
        return image.AllSites.Count(s =>
        {
            var now = new byte[s.OriginalBytes.Length];
            return memory.TryRead(s.Address, now) && now.AsSpan().SequenceEqual(s.OriginalBytes);
        });
    }

    private static void AssertAllSitesOriginal(int pid)
        => Assert.Equal(ProcessImage.Load(pid).AllSites.Count(), OriginalSiteCount(pid));

    private static long Rounds(int pid)
    {
        ProcessImage image = ProcessImage.Load(pid);
        var prog = image.Modules.First(m => m.Name == "prog");
        ulong address = prog.Elf.ReadSymbols(dynamic: false).Single(s => s.Name == "rounds").Value + prog.Bias;
        using var memory = Hotwire.Memory.ProcessMemory.Open(pid);
        var buf = new byte[8];
        memory.TryRead(address, buf);
        return BitConverter.ToInt64(buf);
    }
}
