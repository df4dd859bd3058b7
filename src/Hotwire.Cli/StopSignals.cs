using System.Runtime.InteropServices;

namespace Hotwire.Cli;

/// <summary>
/// Ctrl-C and SIGTERM as cancellation, registered as a command starts: a signal that arrives
/// before tracing began means the user does not want it, so no attach follows it.
/// </summary>
public sealed class StopSignals : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly PosixSignalRegistration _sigint;
    private readonly PosixSignalRegistration _sigterm;
    private volatile bool _signaled;

    public StopSignals()
    {
        _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    /// <summary>Cancelled by a signal or by <see cref="CancelAfter"/>.</summary>
    public CancellationToken Token => _stop.Token;

    public bool IsCancellationRequested => _stop.IsCancellationRequested;

    /// <summary>Ctrl-C or SIGTERM arrived (a --duration running out is not a signal).</summary>
    public bool Signaled => _signaled;

    public void CancelAfter(TimeSpan delay) => _stop.CancelAfter(delay);

    private void OnSignal(PosixSignalContext context)
    {
        context.Cancel = true;
        _signaled = true;
        _stop.Cancel();
    }

    public void Dispose()
    {
        _sigint.Dispose();
        _sigterm.Dispose();
        _stop.Dispose();
    }
}
