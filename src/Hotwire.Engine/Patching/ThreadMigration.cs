namespace Hotwire.Patching;

/// <summary>
/// What the poke protocol needs from the target's threads while a batch runs, which the kernel gets
/// from its own scheduler: threads that block SIGTRAP held stopped for the batch (they would die of
/// a temporary int3), and threads found between the instructions being replaced (a NOP sled, a
/// relocated entry) moved to where those instructions would have taken them.
/// </summary>
/// <param name="runsCode">false while a launched program has run none of its code (nothing to hold)</param>
/// <param name="movedPc">where a thread at a PC inside the site at the given address goes (null: leave it)</param>
public sealed class ThreadMigration(int pid, ProcessMemory memory, Func<int> agentTid, Func<bool> runsCode,
    Func<ulong, ulong, ulong?> movedPc, bool skipSignalFrameSleds, Func<bool>? stopRequested, Func<Action<string>?> notice) : IDisposable
{
    private int Pid => pid;

    private HeldThreads? _held;

    /// <summary>
    /// The threads of the target that block SIGTRAP (SigBlk in /proc/PID/task/TID/status), stopped
    /// with ptrace until disposed. A thread that runs into a temporary int3 while it blocks SIGTRAP
    /// is killed by the kernel (it forces the signal to its default action); a thread that blocks
    /// every signal (a sigwait design's worker) is not rare. Held, it runs nothing during the batch;
    /// a system call our stop interrupts is restarted (Tracee.Interrupt).
    /// </summary>
    public HeldThreads HoldThreadsBlockingSigtrap()
    {
        var held = new HeldThreads(this);
        if (TestSwitches.NoSigtrapGuard || !runsCode())
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
            if (!int.TryParse(Path.GetFileName(task), out int tid) || tid == agentTid())
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
    public sealed class HeldThreads(ThreadMigration owner) : IDisposable
    {
        private readonly Dictionary<int, Tracee> _threads = [];

        public void Add(int tid, Tracee t) => _threads[tid] = t;

        public Tracee? Get(int tid) => _threads.GetValueOrDefault(tid);

        public int Count => _threads.Count;

        public void Dispose()
        {
            if (owner._held == this)
            {
                owner._held = null;
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

    /// <summary>
    /// With int3 on byte 0 of every NOP sled being converted, no thread can enter one; a thread that
    /// was already inside (past byte 0) is stopped briefly and moved past the sled's end, which is
    /// exactly what running the remaining NOPs would do. A thread whose pending SIGTRAP came from our
    /// int3 is left for the handler. One thread at a time, each for a few microseconds.
    /// </summary>
    public void MoveThreadsOutOfSleds(ulong[] sleds)
    {
        Array.Sort(sleds);
        List<MemoryMapping> maps = ProcMaps.Read(Pid);
        (_sledsNow, _mapsNow) = (sleds, maps);
        PtraceThread.Shared.Invoke(() =>
        {
            foreach (string task in Directory.EnumerateDirectories($"/proc/{Pid}/task"))
            {
                int tid = int.Parse(Path.GetFileName(task));
                if (tid == agentTid() || LeftAlone(task))
                {
                    continue;
                }
                void Move(Tracee t)
                {
                    user_regs_struct regs = t.GetRegs();
                    if (InsideSled(sleds, regs.rip) is ulong sled)
                    {
                        bool trappedHere = regs.rip == sled + 1 && (t.HasPendingSignal(Ptrace.SIGTRAP) || SigtrapPending(tid));
                        if (!trappedHere && movedPc(sled, regs.rip) is ulong moved)
                        {
                            regs.rip = moved;
                            t.SetRegs(regs);
                        }
                    }
                    if (!skipSignalFrameSleds)
                    {
                        MoveSignalFramesOutOfSleds(sleds, regs.rsp, maps);
                    }
                }
                if (_held?.Get(tid) is { } heldAlready)
                {
                    Move(heldAlready);   // held for the batch (it blocks SIGTRAP): already stopped
                }
                else if (!Tracee.WhileStopped(Pid, tid, Move) && Directory.Exists(task) && !TestSwitches.SkipUnstoppableThreads)
                {
                    WaitUntilOutside(tid, task, sleds, maps, Move);
                }
            }
        });
    }

    /// <summary>
    /// A thread Hotwire cannot stop (another tracer holds it: a debugger, a profiler) cannot be moved.
    /// Its PC and stack pointer are read from /proc/PID/task/TID/syscall, without disturbing it: while
    /// it (or a signal frame on its stack) is inside a site being converted, or it runs under the
    /// other tracer so that its PC cannot be seen, the tails are not written and Hotwire waits, saying
    /// so once after a moment. It continues when the thread is seen outside, becomes stoppable (then
    /// it is moved), or exits. Killing Hotwire meanwhile is safe: the agent then puts each byte 0 back.
    /// </summary>
    private void WaitUntilOutside(int tid, string task, ulong[] sleds, List<MemoryMapping> maps, Action<Tracee> move)
    {
        bool said = false;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (Directory.Exists(task))
        {
            string[] f;
            try
            {
                f = File.ReadAllText(Path.Combine(task, "syscall")).Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            }
            catch (IOException)
            {
                return; // gone
            }
            if (f.Length < 3)
            {
                // "running": no tracer holds it now, or it runs under one (its PC unknown); try to stop it ourselves
                if (Tracee.WhileStopped(Pid, tid, move))
                {
                    return;
                }
                if (!said && clock.ElapsedMilliseconds > 1000)
                {
                    notice()?.Invoke($"thread {tid} of pid {Pid} runs under another tracer while a function entry is rewritten: waiting until Hotwire can see it outside the entry (Ctrl-C ends Hotwire; its agent then puts the entries back)");
                    said = true;
                }
            }
            else
            {
                ulong sp = Convert.ToUInt64(f[^2], 16), pc = Convert.ToUInt64(f[^1], 16);
                bool inside = InsideSled(sleds, pc) is not null
                    || (!skipSignalFrameSleds && SignalFrames.Find(memory, sp, maps).Any(frame => InsideSled(sleds, frame.Rip) is not null));
                if (!inside)
                {
                    return;
                }
                if (!said)
                {
                    notice()?.Invoke($"thread {tid} of pid {Pid} is held by another tracer inside a function entry being rewritten: waiting until it leaves (Ctrl-C ends Hotwire; its agent then puts the entries back)");
                    said = true;
                }
            }
            if (stopRequested?.Invoke() == true)
            {
                // The batch's int3s are in and the agent waits for the tails: the way out is the one
                // SIGKILL takes (tested: KillTests, RelocatedEntryTests), the dead-man switch.
                notice()?.Invoke($"interrupted while thread {tid} of pid {Pid} is inside a function entry being rewritten: Hotwire ends now, and its agent puts every entry back");
                Environment.Exit(130);
            }
            Thread.Sleep(1);
        }
    }

    // A thread blocked in a system call (its PC on a syscall instruction, not in a sled) with no
    // signal frame saved inside a sled, still blocked in the same call once that was checked,
    // needs no stop: stops are what let a Hotwire killed meanwhile make its call fail with EINTR.
    private bool LeftAlone(string task)
    {
        if (TestSwitches.StopEveryThread || ProcSyscall.BlockedAt(task) is not { } blocked || InsideSled(_sledsNow!, blocked.Pc) is not null)
        {
            return false;
        }
        bool framesInSleds = !skipSignalFrameSleds
            && SignalFrames.Find(memory, blocked.Sp, _mapsNow!).Any(f => InsideSled(_sledsNow!, f.Rip) is not null);
        return !framesInSleds && ProcSyscall.BlockedAt(task) == blocked;
    }

    private ulong[]? _sledsNow;
    private List<MemoryMapping>? _mapsNow;

    // A handler that interrupted a thread inside a sled returns there (a GC's stop-the-world
    // handler parks threads exactly so): its saved PC moves past the sled like a current PC. A
    // frame of our own SIGTRAP at byte 1 is left for our handler, which emulates the new instruction.
    private void MoveSignalFramesOutOfSleds(ulong[] sleds, ulong sp, List<MemoryMapping> maps)
    {
        foreach (SignalFrames.Frame frame in SignalFrames.Find(memory, sp, maps))
        {
            if (InsideSled(sleds, frame.Rip) is ulong sled && !(frame.Rip == sled + 1 && frame.Signal == Ptrace.SIGTRAP)
                && movedPc(sled, frame.Rip) is ulong moved)
            {
                memory.Write(frame.RipSlot, BitConverter.GetBytes(moved));
            }
        }
    }

    // The sled whose bytes 1..4 hold pc, if any.
    private static ulong? InsideSled(ulong[] sleds, ulong pc)
    {
        int i = Array.BinarySearch(sleds, pc);
        int k = i >= 0 ? i : ~i - 1;
        return k >= 0 && pc > sleds[k] && pc < sleds[k] + 5 ? sleds[k] : null;
    }

    private bool SigtrapPending(int tid) => ProcStatus.SignalPending($"/proc/{Pid}/task/{tid}/status", Ptrace.SIGTRAP);

    public void Dispose()
    {
        foreach (Microsoft.Win32.SafeHandles.SafeFileHandle status in _statusFiles.Values)
        {
            status.Dispose();
        }
        _statusFiles.Clear();
    }
}
