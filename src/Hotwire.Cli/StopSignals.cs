using System.Runtime.InteropServices;

namespace Hotwire.Cli;

/// <summary>
/// Ctrl-C and SIGTERM as cancellation. The handlers are registered as Main's first statement
/// (<see cref="Install"/>), so a signal that arrives while the command line is still being read is
/// held until the command knows what it means: a tracing command <see cref="Claim"/>s it (a signal
/// before tracing began means the user does not want it, so no attach follows it); any other
/// command <see cref="Release"/>s the signals to their default action, or ends with Hotwire's own
/// message when one already came.
/// </summary>
public sealed class StopSignals : IDisposable
{
    private static StopSignals? s_process;

    private readonly CancellationTokenSource _stop = new();
    private readonly PosixSignalRegistration _sigint;
    private readonly PosixSignalRegistration _sigterm;
    private volatile bool _signaled;
    private volatile bool _released;

    private StopSignals()
    {
        _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    /// <summary>Registers the handlers for the process's life; until a command claims or releases them, signals are held.</summary>
    public static void Install() => s_process ??= new StopSignals();

    /// <summary>A tracing command takes the signals: from now on they cancel <see cref="Token"/> (and may already have).</summary>
    public static StopSignals Claim()
    {
        Install();
        s_process!._released = false;
        return s_process;
    }

    /// <summary>
    /// A command that does not handle Ctrl-C itself: signals take their default action from now on.
    /// Returns false when one already arrived (the caller ends with <see cref="ExitCode.Interrupted"/>).
    /// </summary>
    public static bool Release()
    {
        if (s_process is not { } stop)
        {
            return true;
        }
        stop._released = true;
        return !stop._signaled;
    }

    /// <summary>Cancelled by a signal or by <see cref="CancelAfter"/>.</summary>
    public CancellationToken Token => _stop.Token;

    public bool IsCancellationRequested => _stop.IsCancellationRequested;

    /// <summary>Ctrl-C or SIGTERM arrived (a --duration running out is not a signal).</summary>
    public bool Signaled => _signaled;

    public void CancelAfter(TimeSpan delay) => _stop.CancelAfter(delay);

    private void OnSignal(PosixSignalContext context)
    {
        if (_released)
        {
            return; // the default action: the process ends as a C tool would
        }
        context.Cancel = true;
        _signaled = true;
        _stop.Cancel();
    }

    /// <summary>The command is done with the signals: their default action applies again.</summary>
    public void Dispose() => _released = true;
}
