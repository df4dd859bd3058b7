namespace Hotwire.Tests.Infrastructure;

/// <summary>
/// A running test target; it signals readiness with a "ready PID" line and is killed on dispose.
/// It runs as a grandchild (under sh), never as a child of the test process: .NET reaps its own
/// children with waitpid, which would swallow the ptrace stops Hotwire waits for (DESIGN.md §3).
/// </summary>
public sealed class TargetProcess : IDisposable
{
    private readonly Process _process;

    private TargetProcess(Process process) => _process = process;

    /// <summary>The target's pid (not the pid of the sh that waits for it).</summary>
    public int Pid { get; private set; }

    public Process Process => _process;

    /// <summary>The words of the ready line ("ready", pid, and whatever the target added).</summary>
    public string[] ReadyWords { get; private set; } = [];

    public string? ReadLine(TimeSpan timeout)
    {
        Task<string?> line = _process.StandardOutput.ReadLineAsync();
        return line.Wait(timeout) ? line.Result : null;
    }

    /// <summary>"running", or how the process ended (its exit status, or the signal that killed it): for failure messages.</summary>
    public string Fate()
    {
        if (!_process.HasExited && !_process.WaitForExit(500))
        {
            return Directory.Exists($"/proc/{Pid}") ? "running" : "gone";
        }
        int code = _process.ExitCode;
        return code > 128 ? $"killed by signal {code - 128}" : $"exited with status {code}";
    }

    public void WriteLine(string line)
    {
        _process.StandardInput.WriteLine(line);
        _process.StandardInput.Flush();
    }

    public static TargetProcess Start(string path, params string[] args)
    {
        var psi = new ProcessStartInfo("/bin/sh")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = Path.GetDirectoryName(path)!,
        };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec 3<&0; \"$@\" <&3 3<&- & wait $!");
        psi.ArgumentList.Add("sh");
        psi.ArgumentList.Add(path);
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
        string[] words = ready.Split(' ');
        target.Pid = int.Parse(words[1]);
        target.ReadyWords = words;
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
            if (Pid > 0)
            {
                try
                {
                    System.Diagnostics.Process.GetProcessById(Pid).Kill();
                }
                catch (ArgumentException)
                {
                }
                catch (InvalidOperationException)
                {
                }
            }
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
