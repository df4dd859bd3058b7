namespace Hotwire.Tests.Infrastructure;

public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public string[] Lines => Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
}

/// <summary>
/// Runs the real `hotwire` command, as a user would, in its own process: the native executable
/// that ./hotwire runs (artifacts/native/hotwire), built by scripts/build-native once per test run
/// when it is missing or older than the sources (./run-tests builds it before the tests start).
/// </summary>
public static class HotwireCli
{
    private static readonly Lazy<string> s_executable = new(BuildNative);

    /// <summary>The native hotwire executable, built first if stale.</summary>
    public static string ExecutablePath => s_executable.Value;

    public static CliResult Run(params string[] args) => Run(TimeSpan.FromMinutes(2), args);

    /// <summary>Starts `hotwire ARGS` and returns at once (output redirected), for tests that signal or kill it.</summary>
    public static Process Start(params string[] args) => Start(new Dictionary<string, string>(), args);

    /// <summary>As <see cref="Start(string[])"/>, with extra environment variables (the test-only HOTWIRE_TEST_* switches).</summary>
    public static Process Start(IReadOnlyDictionary<string, string> environment, params string[] args) => Process.Start(StartInfo(environment, args))!;

    /// <summary>`hotwire ARGS` with output redirected, for tests that start it their own way.</summary>
    public static ProcessStartInfo StartInfo(params string[] args) => StartInfo(new Dictionary<string, string>(), args);

    public static ProcessStartInfo StartInfo(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var psi = new ProcessStartInfo(ExecutablePath, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach ((string name, string value) in environment)
        {
            psi.Environment[name] = value;
        }
        return psi;
    }

    public static CliResult Run(TimeSpan timeout, params string[] args) => Run(timeout, new Dictionary<string, string>(), args);

    /// <summary>With extra environment variables (the test-only HOTWIRE_TEST_* switches).</summary>
    public static CliResult Run(IReadOnlyDictionary<string, string> environment, params string[] args) => Run(TimeSpan.FromMinutes(2), environment, args);

    public static CliResult Run(TimeSpan timeout, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        using Process p = Start(environment, args);
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"hotwire {string.Join(' ', args)} did not finish in {timeout}");
        }
        return new CliResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    // The script is a no-op when the executable is fresh; it holds a lock, so concurrent runs build once.
    private static string BuildNative()
    {
        string script = Path.Combine(RepositoryRoot(), "scripts", "build-native");
        var psi = new ProcessStartInfo(script) { RedirectStandardOutput = true, RedirectStandardError = true };
        using Process p = Process.Start(psi)!;
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string path = stdout.Trim();
        if (p.ExitCode != 0 || !File.Exists(path))
        {
            throw new InvalidOperationException($"scripts/build-native failed ({p.ExitCode}): {stderr.Result}");
        }
        return path;
    }

    private static string RepositoryRoot()
    {
        for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
        {
            if (File.Exists(Path.Combine(dir, "scripts", "build-native")))
            {
                return dir;
            }
        }
        throw new InvalidOperationException("scripts/build-native not found above " + AppContext.BaseDirectory);
    }
}
