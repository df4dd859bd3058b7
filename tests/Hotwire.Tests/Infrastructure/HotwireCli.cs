using System.Diagnostics;

namespace Hotwire.Tests.Infrastructure;

public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public string[] Lines => Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
}

/// <summary>Runs the real `hotwire` command, as a user would, in its own process.</summary>
public static class HotwireCli
{
    private static readonly string s_dll = Path.Combine(AppContext.BaseDirectory, "hotwire.dll");

    public static string DllPath => s_dll;

    public static CliResult Run(params string[] args) => Run(TimeSpan.FromMinutes(2), args);

    /// <summary>Starts `hotwire ARGS` and returns at once (output redirected), for tests that signal or kill it.</summary>
    public static Process Start(params string[] args) => Start(new Dictionary<string, string>(), args);

    /// <summary>As <see cref="Start(string[])"/>, with extra environment variables (the test-only HOTWIRE_TEST_* switches).</summary>
    public static Process Start(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach ((string name, string value) in environment)
        {
            psi.Environment[name] = value;
        }
        psi.ArgumentList.Add(s_dll);
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        return Process.Start(psi)!;
    }

    public static CliResult Run(TimeSpan timeout, params string[] args) => Run(timeout, new Dictionary<string, string>(), args);

    /// <summary>With extra environment variables (the test-only HOTWIRE_TEST_* switches).</summary>
    public static CliResult Run(IReadOnlyDictionary<string, string> environment, params string[] args) => Run(TimeSpan.FromMinutes(2), environment, args);

    public static CliResult Run(TimeSpan timeout, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach ((string name, string value) in environment)
        {
            psi.Environment[name] = value;
        }
        psi.ArgumentList.Add(s_dll);
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"hotwire {string.Join(' ', args)} did not finish in {timeout}");
        }
        return new CliResult(p.ExitCode, stdout.Result, stderr.Result);
    }
}
