using System.Collections.Concurrent;

namespace Hotwire.Injection;

/// <summary>
/// Runs every ptrace call on one dedicated OS thread: the kernel ties a tracee to the thread that
/// attached, and async/await would move work between threads.
/// </summary>
public sealed class PtraceThread : IDisposable
{
    private readonly BlockingCollection<Action> _work = new();
    private readonly Thread _thread;

    public PtraceThread()
    {
        _thread = new Thread(Loop) { IsBackground = true, Name = "hotwire-ptrace" };
        _thread.Start();
    }

    /// <summary>A process-wide instance; ptrace work of every session goes through it.</summary>
    public static PtraceThread Shared { get; } = new();

    public T Invoke<T>(Func<T> work)
    {
        if (Thread.CurrentThread == _thread)
        {
            return work();
        }
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                done.SetResult(work());
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        });
        try
        {
            return done.Task.GetAwaiter().GetResult();
        }
        catch (AggregateException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
    }

    public void Invoke(Action work) => Invoke(() =>
    {
        work();
        return 0;
    });

    private void Loop()
    {
        foreach (Action a in _work.GetConsumingEnumerable())
        {
            a();
        }
    }

    public void Dispose() => _work.CompleteAdding();
}
