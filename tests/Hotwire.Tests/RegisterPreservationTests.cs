namespace Hotwire.Tests;

/// <summary>
/// gcc's -fipa-ra (on from -O2) lets a caller keep values in call-clobbered registers across a call
/// to a function it knows leaves them alone. Traced, such a function must still leave them alone:
/// every trampoline and return handler gives back every register it uses (Patching/Ops.cs,
/// Preserved). Found on redis-server, whose callers of raxSetData keep r9 and r10 across it.
/// </summary>
[Collection("engine")]
public class RegisterPreservationTests(ITestOutputHelper output)
{
    private const long CallsPerThread = 300_000;

    public static TheoryData<Flavour, string> Cases()
    {
        var data = new TheoryData<Flavour, string>();
        foreach (Flavour flavour in new[] { Flavour.IpaRa, Flavour.IpaRaPlain })
        {
            foreach (string tracer in new[] { "count", "function", "function_graph", "profile" })
            {
                data.Add(flavour, tracer);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_traced_function_hands_back_every_register_its_callers_keep(Flavour flavour, string tracer)
    {
        (long calls, long bad) = RunTraced(flavour, tracer, new Dictionary<string, string>());
        Assert.Equal(2 * CallsPerThread, calls);
        Assert.Equal(0, bad);
    }

    [Theory]
    [InlineData(Flavour.IpaRaPlain, "count")]
    [InlineData(Flavour.IpaRa, "function")]
    [InlineData(Flavour.IpaRaPlain, "function_graph")]
    [InlineData(Flavour.IpaRa, "profile")]
    public void With_the_test_only_switch_registers_come_back_changed_so_the_test_has_teeth(Flavour flavour, string tracer)
    {
        (long calls, long bad) = RunTraced(flavour, tracer, new Dictionary<string, string> { ["HOTWIRE_TEST_CLOBBER_SCRATCH"] = "1" });
        Assert.Equal(2 * CallsPerThread, calls);
        Assert.True(bad > 0, "with HOTWIRE_TEST_CLOBBER_SCRATCH the callers' registers should come back changed");
    }

    // Traces leaf while 2 threads make CallsPerThread calls each; returns the calls and the bad ones.
    private (long Calls, long Bad) RunTraced(Flavour flavour, string tracer, Dictionary<string, string> environment)
    {
        string exe = TargetBuilder.Get(flavour);
        using TargetProcess target = TargetProcess.Start(exe);
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-ipara-{Guid.NewGuid():N}");
        string[] command = tracer == "count"
            ? ["count", "--pid", target.Pid.ToString(), "-F", "leaf", "-d", "60"]
            : ["record", "--tracer", tracer, "--pid", target.Pid.ToString(), "-F", "leaf", "-d", "60", "-o", dir];
        if (flavour == Flavour.IpaRaPlain)
        {
            command = [.. command, "--relocate"];
        }
        using Process hotwire = HotwireCli.Start(environment, command);
        try
        {
            string? first = hotwire.StandardError.ReadLine();               // "counting …" / "recording …" once the site is live
            Assert.True(first is not null && (first.Contains("counting") || first.Contains("recording")), first);
            target.WriteLine($"run {CallsPerThread}");
            string? line = target.ReadLine(TimeSpan.FromSeconds(60));
            output.WriteLine($"{flavour} {tracer}: {line}");
            Assert.NotNull(line);
            string[] words = line.Split(' ');
            return (long.Parse(words[1]), long.Parse(words[3]));
        }
        finally
        {
            Hotwire.Interop.Ptrace.kill(hotwire.Id, 2 /* SIGINT */);
            hotwire.WaitForExit(30_000);
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, true);
            }
        }
    }
}
