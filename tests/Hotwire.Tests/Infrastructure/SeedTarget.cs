using System.Text.RegularExpressions;

namespace Hotwire.Tests.Infrastructure;

/// <summary>Drives tests/targets/seedcase.c: threads calling f(), f_new beside it.</summary>
public sealed partial class SeedTarget : IDisposable
{
    private readonly TargetProcess _process;

    public SeedTarget(Flavour flavour, int threads = 4, int pauseIterations = 0)
    {
        _process = TargetProcess.Start(TargetBuilder.Get(flavour), threads.ToString(), pauseIterations.ToString());
    }

    public int Pid => _process.Pid;

    public TargetProcess Process => _process;

    public void Go() => Send("go");

    public (long Old, long New, long Calls) Counts() => Ask("counts");

    public (long Old, long New, long Calls) Stop() => Ask("stop");

    private void Send(string line)
    {
        _process.Process.StandardInput.WriteLine(line);
        _process.Process.StandardInput.Flush();
    }

    private (long, long, long) Ask(string line)
    {
        Send(line);
        Task<string?> reply = _process.Process.StandardOutput.ReadLineAsync();
        if (!reply.Wait(TimeSpan.FromSeconds(30)) || reply.Result is not { } text)
        {
            throw new InvalidOperationException($"seedcase did not answer '{line}' (alive: {!_process.Process.HasExited})");
        }
        Match m = Reply().Match(text);
        if (!m.Success)
        {
            throw new InvalidOperationException($"unexpected reply from seedcase: {text}");
        }
        return (long.Parse(m.Groups[1].Value), long.Parse(m.Groups[2].Value), long.Parse(m.Groups[3].Value));
    }

    [GeneratedRegex(@"^old (\d+) new (\d+) calls (\d+)$")]
    private static partial Regex Reply();

    public void Dispose() => _process.Dispose();
}
