using System.Diagnostics;

namespace Hotwire.Tests.Infrastructure;

/// <summary>A running test target; it signals readiness with a "ready PID" line and is killed on dispose.</summary>
public sealed class TargetProcess : IDisposable
{
    private readonly Process _process;

    private TargetProcess(Process process) => _process = process;

    public int Pid => _process.Id;

    public Process Process => _process;

    public static TargetProcess Start(string path, params string[] args)
    {
        var psi = new ProcessStartInfo(path)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = Path.GetDirectoryName(path)!,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        var process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {path}");
        var target = new TargetProcess(process);
        Task<string?> line = process.StandardOutput.ReadLineAsync();
        if (!line.Wait(TimeSpan.FromSeconds(20)) || line.Result is not { } ready || !ready.StartsWith("ready", StringComparison.Ordinal))
        {
            target.Dispose();
            throw new InvalidOperationException($"{path} did not signal readiness");
        }
        return target;
    }

    /// <summary>Feeds one line to the target (each line makes it do one round of work).</summary>
    public void Poke()
    {
        _process.StandardInput.WriteLine("x");
        _process.StandardInput.Flush();
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException)
        {
        }
        _process.Dispose();
    }
}
