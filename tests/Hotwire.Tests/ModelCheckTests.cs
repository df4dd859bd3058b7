using System.Text.RegularExpressions;

namespace Hotwire.Tests;

/// <summary>
/// The patch protocol, model-checked (verify/patch.pml, docs/verify.md): SPIN explores every
/// interleaving of the agent's batches, two or three threads fetching the site's bytes under a
/// pessimistic cross-modifying-code model, late SIGTRAP delivery and Hotwire killed at any step.
/// The real protocol has no counterexample; each broken variant (a negative control) has one.
/// </summary>
public partial class ModelCheckTests(ITestOutputHelper output)
{
    [GeneratedRegex(@"errors: (\d+)")]
    private static partial Regex Errors();

    [GeneratedRegex(@"^\s*(\d+) states, stored", RegexOptions.Multiline)]
    private static partial Regex States();

    [Theory]
    [InlineData("seed")]
    [InlineData("patch")]
    [InlineData("sled")]
    [InlineData("reloc")]
    [InlineData("seed-3threads")]
    [InlineData("sled-3threads")]
    public void The_protocol_has_no_counterexample(string variant)
    {
        (int errors, string pan) = Check(variant);
        Assert.True(errors == 0, $"{variant}: SPIN found a counterexample:\n{pan}");
    }

    [Theory]
    [InlineData("skip-emulate")]          // the handler skips instead of emulating: a call is lost
    [InlineData("skip-emulate-patch")]    // ... and a reported live patch's old body runs
    [InlineData("no-sync-after-int3")]    // a stale byte 0 meets a new tail: a torn instruction
    [InlineData("no-sync-after-int3-reloc")] // ... in the relocated case too
    [InlineData("no-sync-after-tail")]
    [InlineData("no-sync-after-head")]    // a stale int3 after detach: the trap kills the process
    [InlineData("base-after-batch")]      // the dead-man switch undoes a reported live patch
    [InlineData("no-sled-migration")]     // a thread between the sled's NOPs runs half a NOP5
    [InlineData("no-sigframe-migration")] // ... and so does one returning from a signal handler
    [InlineData("no-quiescence")]         // a relocated prologue rewritten under a thread inside it
    [InlineData("death-finishes-sled")]   // Hotwire killed in the pause: finishing the batch tears
    [InlineData("death-finishes-reloc")]
    public void Each_broken_variant_has_a_counterexample(string variant)
    {
        (int errors, string pan) = Check(variant);
        Assert.True(errors > 0, $"{variant}: SPIN found no counterexample, the model's properties lost their teeth:\n{pan}");
    }

    [Fact]
    public void The_tests_cover_every_variant_verify_run_knows()
    {
        string list = Run(RunScript, ["--list"]).Stdout;
        string[] names = list.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(' ')[0]).ToArray();
        string[] tested = typeof(ModelCheckTests).GetMethods()
            .SelectMany(m => m.GetCustomAttributes(typeof(InlineDataAttribute), false).Cast<InlineDataAttribute>())
            .SelectMany(a => a.GetData(null!)).Select(d => (string)d[0]).ToArray();
        Assert.Equal(names.Order(), tested.Order());
    }

    private (int Errors, string Pan) Check(string variant)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hotwire-verify-{Environment.ProcessId}-{variant}");
        try
        {
            var sw = Stopwatch.StartNew();
            (int exit, string stdout, string stderr) = Run(RunScript, ["--keep", dir, variant]);
            output.WriteLine($"{stdout}{stderr}({sw.Elapsed.TotalSeconds:F1} s with spin -a and gcc)");
            Assert.True(exit == 0, $"verify/run {variant} exited {exit}: {stderr}");
            string pan = File.ReadAllText(Path.Combine(dir, variant, "pan.out"));
            Match m = Errors().Match(pan);
            Assert.True(m.Success, $"no 'errors:' line in pan's output:\n{pan}");
            Assert.True(States().IsMatch(pan), $"no state count in pan's output:\n{pan}");
            return (int.Parse(m.Groups[1].Value), pan);
        }
        finally
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }

    private static string RunScript
    {
        get
        {
            for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
            {
                string candidate = Path.Combine(dir, "verify", "run");
                if (File.Exists(candidate) && File.Exists(Path.Combine(dir, "verify", "patch.pml")))
                {
                    return candidate;
                }
            }
            throw new InvalidOperationException("verify/run not found above " + AppContext.BaseDirectory);
        }
    }

    private static (int Exit, string Stdout, string Stderr) Run(string file, string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["VERIFY_CFLAGS"] = "-O0"; // compiling pan costs more than searching these small state spaces
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout, stderr.Result);
    }
}
