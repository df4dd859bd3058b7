using Hotwire.Injection;

namespace Hotwire.Patching;

public sealed partial class Session
{
    private HeldThreads? _held;

    /// <summary>
    /// The threads of the target that block SIGTRAP (SigBlk in /proc/PID/task/TID/status), stopped
    /// with ptrace until disposed. A thread that runs into a temporary int3 while it blocks SIGTRAP
    /// is killed by the kernel (it forces the signal to its default action); a thread that blocks
    /// every signal (a sigwait design's worker) is not rare. Held, it runs nothing during the batch;
    /// a system call our stop interrupts is restarted (Tracee.Interrupt).
    /// </summary>
    private HeldThreads HoldThreadsBlockingSigtrap()
    {
        var held = new HeldThreads(this);
        if (TestSwitches.NoSigtrapGuard || Launched && !_running)
        {
            return held;
        }
        List<int> blocking = ThreadsBlockingSigtrap();
        if (blocking.Count == 0)
        {
            return held;
        }
        PtraceThread.Shared.Invoke(() =>
        {
            foreach (int tid in blocking)
            {
                try
                {
                    Tracee t = Tracee.Seize(Pid, tid);
                    held.Add(tid, t);
                    t.Interrupt();
                }
                catch (HotwireException)
                {
                    // exited meanwhile
                }
            }
        });
        _held = held;
        return held;
    }

    // Each thread's status file stays open: one pread per thread and batch (a toggle is tens of
    // microseconds; opening and parsing every file again cost more than the batch itself).
    private readonly Dictionary<int, Microsoft.Win32.SafeHandles.SafeFileHandle> _statusFiles = [];
    private byte[] _statusBuffer = new byte[4096];

    private List<int> ThreadsBlockingSigtrap()
    {
        const ulong SigtrapBit = 1UL << (5 - 1);
        var blocking = new List<int>();
        var alive = new HashSet<int>();
        IEnumerable<string> tasks;
        try
        {
            tasks = Directory.EnumerateDirectories($"/proc/{Pid}/task").ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return blocking;
        }
        foreach (string task in tasks)
        {
            if (!int.TryParse(Path.GetFileName(task), out int tid) || tid == AgentTid)
            {
                continue;
            }
            alive.Add(tid);
            try
            {
                if (!_statusFiles.TryGetValue(tid, out var handle))
                {
                    handle = File.OpenHandle(Path.Combine(task, "status"));
                    _statusFiles[tid] = handle;
                }
                int n = RandomAccess.Read(handle, _statusBuffer, 0);
                if (SigBlk(_statusBuffer.AsSpan(0, n)) is ulong mask && (mask & SigtrapBit) != 0)
                {
                    blocking.Add(tid);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // exited meanwhile
            }
        }
        foreach (int gone in _statusFiles.Keys.Where(t => !alive.Contains(t)).ToList())
        {
            _statusFiles.Remove(gone, out var handle);
            handle?.Dispose();
        }
        return blocking;
    }

    // The "SigBlk:\t<16 hex digits>" line of a status file.
    private static ulong? SigBlk(ReadOnlySpan<byte> status)
    {
        int at = status.IndexOf("SigBlk:\t"u8);
        if (at < 0 || at + 8 + 16 > status.Length)
        {
            return null;
        }
        return ulong.TryParse(status.Slice(at + 8, 16), System.Globalization.NumberStyles.HexNumber, null, out ulong mask) ? mask : null;
    }

    /// <summary>Threads held for one batch; disposing lets them go.</summary>
    private sealed class HeldThreads(Session session) : IDisposable
    {
        private readonly Dictionary<int, Tracee> _threads = [];

        public void Add(int tid, Tracee t) => _threads[tid] = t;

        public Tracee? Get(int tid) => _threads.GetValueOrDefault(tid);

        public int Count => _threads.Count;

        public void Dispose()
        {
            if (session._held == this)
            {
                session._held = null;
            }
            if (_threads.Count == 0)
            {
                return;
            }
            PtraceThread.Shared.Invoke(() =>
            {
                foreach (Tracee t in _threads.Values)
                {
                    try
                    {
                        t.Detach();
                    }
                    catch (HotwireException)
                    {
                    }
                }
            });
            _threads.Clear();
        }
    }
}
