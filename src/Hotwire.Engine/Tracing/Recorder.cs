using System.Diagnostics;
using Hotwire.Elf;
using Hotwire.Patching;

namespace Hotwire.Tracing;

/// <summary>What a recording saw, for the closing summary.</summary>
public sealed record RecordSummary(long Events, ulong Lost, int Threads, TimeSpan Elapsed, long BytesWritten, string? WriteError, ulong ShadowOverflow = 0)
{
    /// <summary>Time the threads spent waiting for room in their buffers, summed (--no-drop).</summary>
    public TimeSpan WriterWait { get; init; }

    /// <summary>Time the recorder waited for the file to take what it had packed (the disk slower than the events).</summary>
    public TimeSpan DiskWait { get; init; }
}

/// <summary>
/// Drains the function tracer's per-thread ring buffers into <c>hotwire.data/</c> (and, for
/// <c>live</c>, to a callback). One consumer thread; each buffer has one producer (its thread), so
/// the only synchronisation is the head the thread publishes and the tail we publish back.
/// </summary>
public sealed class Recorder : IDisposable
{
    private readonly Session _session;
    private readonly RingTracer _tracer;
    private readonly string _dir;
    private readonly Action<int, RawEvent>? _live;
    private readonly IReadOnlySet<int>? _tids;
    private readonly EventsFileWriter _writer;
    private readonly Dictionary<int, ThreadInfo> _threads = [];
    private readonly Dictionary<int, int> _bufferTid = [];
    private readonly Stopwatch _clock = new();
    private readonly ClockSample _start;
    private Thread? _consumer;
    private volatile bool _stopping;
    private string? _writeError;

    public Recorder(Session session, RingTracer tracer, string dir, Action<int, RawEvent>? live = null, IReadOnlySet<int>? tids = null)
    {
        _session = session;
        _tracer = tracer;
        _dir = dir;
        _live = live;
        _tids = tids;
        try
        {
            Directory.CreateDirectory(dir);
            foreach (string stale in new[] { TraceData.InfoFile, TraceData.EventsFile })
            {
                File.Delete(Path.Combine(dir, stale));
            }
            _writer = new EventsFileWriter(new FileStream(Path.Combine(dir, TraceData.EventsFile), FileMode.CreateNew, FileAccess.Write, FileShare.Read, 1 << 20));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new HotwireException($"cannot write the recording to {dir}: {e.Message} (give a writable directory with -o)");
        }
        _start = TscClock.Sample();
        _processName = ThreadName(session.Pid, session.Pid);
    }

    public long Events { get; private set; }

    /// <summary>function_graph: drop calls shorter than this (and their short callees), keeping callers of longer ones.</summary>
    public long TimeFilterNs { get; init; }

    /// <summary>Starts draining; call after the tracer is registered.</summary>
    public void Start()
    {
        // A first info.json now, so that a recording cut short (disk full, SIGKILL) still replays.
        try
        {
            Thread.Sleep(5); // two clock samples apart, for the TSC rate
            TraceData.WriteInfo(_dir, BuildInfo("", TscClock.Sample()));
        }
        catch (IOException e)
        {
            _writeError ??= e.Message;
        }
        _clock.Start();
        _consumer = new Thread(Consume) { IsBackground = true, Name = "hotwire-consumer" };
        _consumer.Start();
        _tracer.SetWritersWait(true);
    }

    /// <summary>False once writing failed (disk full): the caller should stop tracing.</summary>
    public bool Healthy => WriteError is null;

    private string? WriteError => _writeError ?? _writer.Error;

    private void Consume()
    {
        long lastRefresh = Environment.TickCount64, lastReap = lastRefresh, lastPublish = lastRefresh;
        while (!_stopping)
        {
            if (Environment.TickCount64 - lastRefresh > 20)
            {
                RefreshThreadNames();
                lastRefresh = Environment.TickCount64;
            }
            if (_tracer.ReusesBuffers && Environment.TickCount64 - lastReap > 200)
            {
                ReleaseExitedThreads();
                lastReap = Environment.TickCount64;
            }
            int drained = DrainAll();
            // The writer gets what is packed in pieces of about a megabyte, or every 20 ms.
            if (_writer.Pending >= 1 << 20 || (_writer.Pending > 0 && Environment.TickCount64 - lastPublish >= 20))
            {
                _writer.Publish();
                lastPublish = Environment.TickCount64;
            }
            if (TestSwitches.SlowDrain is TimeSpan slow)
            {
                Thread.Sleep(slow);   // test-only: a recorder that cannot keep up
            }
            if (!_capped && drained < _tracer.Buffers.Capacity / 8)
            {
                // Little came since the last look: sleep a millisecond (a ring takes tens of
                // milliseconds to fill at 20 M events/s), so that threads write many events between
                // our reads of their heads (each read costs them a cache miss), and so that a
                // recorder spinning for work does not take the CPU from the traced threads (with
                // two busy threads on two cores, it must take it from one of them).
                Thread.Sleep(1);
            }
        }
    }

    /// <summary>
    /// The buffers of threads that have exited go back to the tracer for new threads: drained
    /// first, their lost count kept with their thread. (A tid is not reused for a long time: the
    /// kernel hands them out in order up to pid_max.)
    /// </summary>
    private void ReleaseExitedThreads()
    {
        foreach ((int index, int tid) in _bufferTid.ToList())
        {
            // /proc/TID, not /proc/PID/task/TID: a forked child's threads are not the target's,
            // and outlive it (their buffers were once released under them at the target's exit).
            if (Directory.Exists($"/proc/{tid}/task/{tid}"))
            {
                continue;
            }
            while (Drain(index) == MaxDrainEvents)
            {
                // its thread is gone: empty the ring before it goes to a new thread
            }
            ulong lost = _tracer.Heap.Shared.ReadU64(_tracer.BufferOffset(index) + TraceBufferOptions.Lost);
            if (!_threads.ContainsKey(tid))
            {
                NoteThread(tid);
            }
            _threads[tid].Lost += lost;
            _bufferTid.Remove(index);
            _tracer.Release(index, tid);
            BuffersReleased++;
        }
    }

    /// <summary>Buffers given back after their thread exited, for new threads.</summary>
    public int BuffersReleased { get; private set; }

    /// <summary>Events taken from one buffer in one pass (their packed size fits a writer block).</summary>
    private const int MaxDrainEvents = 65536;

    private bool _capped;   // a buffer had more than one pass takes: drain again at once

    private int DrainAll()
    {
        _capped = false;
        int drained = 0;
        int buffers = _tracer.BuffersInUse;
        for (int i = 0; i < buffers; i++)
        {
            drained += Drain(i);
        }
        return drained;
    }

    private unsafe int Drain(int index)
    {
        var shared = _tracer.Heap.Shared;
        ulong buffer = _tracer.BufferOffset(index);
        ulong head = shared.ReadU64(buffer + TraceBufferOptions.Head);
        ulong tail = shared.ReadU64(buffer + TraceBufferOptions.Tail);
        if (head == tail)
        {
            return 0;
        }
        if (!_bufferTid.TryGetValue(index, out int tid))
        {
            tid = (int)shared.ReadU32(buffer + TraceBufferOptions.Tid);
            if (tid == 0)
            {
                return 0; // claimed a moment ago, tid not stored yet
            }
            _bufferTid[index] = tid;
            NoteThread(tid);
        }
        long capacity = _tracer.Buffers.Capacity;
        int size = _tracer.Buffers.EventBytes;
        // At most MaxDrainEvents at a time: the thread gets room back sooner, the packed chunks fit
        // a writer block (no allocation), and the other buffers are not kept waiting.
        if (head - tail > MaxDrainEvents)
        {
            head = tail + MaxDrainEvents;
            _capped = true;
        }
        int count = (int)(head - tail);
        bool keep = _tids is null || _tids.Contains(tid);
        if (keep && Healthy && TimeFilterNs > 0 && _tracer.Buffers.Info)
        {
            count = DrainFiltered(tid, buffer, tail, count);
        }
        else if (keep && Healthy)
        {
            long first = (long)(tail & (ulong)(capacity - 1));
            long run = Math.Min(count, capacity - first);
            ulong data = buffer + TraceBufferOptions.HeaderBytes;
            int need = EventPacking.MaxPackedBytes(count, _tracer.Buffers.Args, _tracer.Buffers.FixedFields);
            need += (count / ChunkEvents + 2) * 16;
            Span<byte> packed = _writer.Reserve(need);
            // Chunks of at most 4096 events, each from absolute values: a file cut short loses little.
            int length = PackRun(tid, shared.Bytes(data + (ulong)(first * size), (int)(run * size)), (int)run, size, packed, 0);
            length = PackRun(tid, shared.Bytes(data, (int)((count - run) * size)), (int)(count - run), size, packed, length);
            _writer.Commit(length);
            if (_live is not null)
            {
                for (long k = 0; k < count; k++)
                {
                    long slot = (long)((tail + (ulong)k) & (ulong)(capacity - 1));
                    _live(tid, RawEvent.Decode(shared.Bytes(buffer + TraceBufferOptions.HeaderBytes + (ulong)(slot * size), size), _tracer.Buffers.Args, _tracer.Buffers.FixedFields));
                }
            }
            Events += count;
            _threads[tid].Events += count;
        }
        shared.WriteU64(buffer + TraceBufferOptions.Tail, head); // the slots are free again
        return (int)(head - tail);
    }

    // ---- the time filter (uftrace's -t), over the events of each pass (TimeFilter)
    private TimeFilter? _timeFilter;

    private int DrainFiltered(int tid, ulong buffer, ulong tail, int count)
    {
        var shared = _tracer.Heap.Shared;
        _timeFilter ??= new TimeFilter((ulong)(TimeFilterNs * new ClockCalibration(_start, TscClock.Sample()).TscPerNs));
        long capacity = _tracer.Buffers.Capacity;
        int size = _tracer.Buffers.EventBytes;
        int args = _tracer.Buffers.Args;
        var events = new List<RawEvent>(count);
        for (long k = 0; k < count; k++)
        {
            long slot = (long)((tail + (ulong)k) & (ulong)(capacity - 1));
            events.Add(RawEvent.Decode(shared.Bytes(buffer + TraceBufferOptions.HeaderBytes + (ulong)(slot * size), size), args, _tracer.Buffers.FixedFields));
        }
        List<RawEvent> kept = _timeFilter.Filter(tid, events);
        if (kept.Count > 0)
        {
            var raw = new byte[kept.Count * size];
            for (int i = 0; i < kept.Count; i++)
            {
                kept[i].Encode(raw.AsSpan(i * size, size), _tracer.Buffers.FixedFields);
            }
            int need = EventPacking.MaxPackedBytes(kept.Count, args, _tracer.Buffers.FixedFields) + (kept.Count / ChunkEvents + 2) * 16;
            Span<byte> packed = _writer.Reserve(need);
            _writer.Commit(PackRun(tid, raw, kept.Count, size, packed, 0));
        }
        Events += kept.Count;
        _threads[tid].Events += kept.Count;
        return kept.Count;
    }

    // Threads often name themselves (pthread_setname_np) after their first traced call.
    private void RefreshThreadNames()
    {
        foreach (ThreadInfo t in _threads.Values.ToList())
        {
            if (ThreadName(t.Pid, t.Tid) is { } name)
            {
                t.Name = name;
            }
        }
        if (_modulesRefreshed < 3 && _clock.ElapsedMilliseconds > 20 + 500L * _modulesRefreshed && _modulesLoading is null or { IsCompleted: true })
        {
            // Reading every module's symbols takes up to 20 ms: not on the drain's thread, which
            // must come back to the rings within a few milliseconds.
            _modulesRefreshed++;
            _modulesLoading = Task.Run(LoadModules);
        }
    }

    private int _modulesRefreshed;
    private List<LoadedModule>? _modules;

    // Libraries the program loaded after Hotwire attached (at launch: all of them) are needed to
    // name callers in them.
    private void RefreshModules()
    {
        _modulesLoading?.Wait();
        _modulesRefreshed++;
        LoadModules();
    }

    private Task? _modulesLoading;

    private void LoadModules()
    {
        try
        {
            _modules = ProcessImage.Load(_session.Pid).Modules.ToList();
        }
        catch (Exception e) when (e is HotwireException or IOException or UnauthorizedAccessException)
        {
        }
    }

    private const int ChunkEvents = 4096;

    private readonly ulong[] _previous = new ulong[16];

    /// <summary>Packs <paramref name="count"/> raw events into chunks of at most <see cref="ChunkEvents"/> at <paramref name="at"/>; returns the end.</summary>
    private int PackRun(int tid, ReadOnlySpan<byte> raw, int count, int size, Span<byte> packed, int at)
    {
        for (int done = 0; done < count; done += ChunkEvents)
        {
            int n = Math.Min(ChunkEvents, count - done);
            Span<byte> header = packed.Slice(at, 16);
            int length = EventPacking.Pack(raw.Slice(done * size, n * size), n, size, _tracer.Buffers.Args, _previous, packed[(at + 16)..]);
            BitConverter.TryWriteBytes(header, TraceData.PackedChunkMagic);
            BitConverter.TryWriteBytes(header[4..], tid);
            BitConverter.TryWriteBytes(header[8..], n);
            BitConverter.TryWriteBytes(header[12..], length);
            at += 16 + length;
        }
        return at;
    }

    private void NoteThread(int tid)
    {
        if (_threads.ContainsKey(tid))
        {
            return; // a thread with a second buffer keeps what was counted for it
        }
        int pid = ProcStatus.IntField($"/proc/{tid}/status", "Tgid") ?? _session.Pid;
        // A thread gone before we saw it keeps its process's name, as ftrace shows a task's comm.
        _threads[tid] = new ThreadInfo { Tid = tid, Pid = pid, Name = ThreadName(pid, tid) ?? ThreadName(pid, pid) ?? _processName ?? "<...>" };
    }

    private string? _processName;

    private static string? ThreadName(int pid, int tid)
    {
        try
        {
            string name = File.ReadAllText($"/proc/{pid}/task/{tid}/comm").Trim();
            return name.Length > 0 ? name : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// Call after the tracer is unregistered (no new events): drains what is left, records lost
    /// counts, writes info.json. The session must still be attached (its memory mapped).
    /// </summary>
    public RecordSummary Finish(string command)
    {
        _tracer.SetWritersWait(false);   // a writer still waiting drops its event (counted) instead of writing after the last drain
        _stopping = true;
        _consumer?.Join();
        // Until every ring is empty: a pass takes at most MaxDrainEvents from each.
        do
        {
            DrainAll();
        }
        while (_capped);
        ClockSample end = TscClock.Sample();
        if (_session.IsAlive() && !_session.Execed())
        {
            RefreshModules();
        }
        _lostNoBuffer = _tracer.LostNoBuffer;
        for (int i = 0; i < _tracer.BuffersInUse; i++)
        {
            ulong buffer = _tracer.BufferOffset(i);
            int tid = _bufferTid.TryGetValue(i, out int t) ? t : (int)_tracer.Heap.Shared.ReadU32(buffer + TraceBufferOptions.Tid);
            if (tid == 0)
            {
                continue; // released, not claimed again
            }
            if (!_threads.ContainsKey(tid))
            {
                NoteThread(tid);
            }
            ulong l = _tracer.Heap.Shared.ReadU64(buffer + TraceBufferOptions.Lost);
            _threads[tid].Lost += l;
            // Names set after a thread's first traced call (pthread_setname_np) are current now.
            if (ThreadName(_threads[tid].Pid, tid) is { } name)
            {
                _threads[tid].Name = name;
            }
        }
        CloseEvents();
        TraceInfo info = BuildInfo(command, end);
        try
        {
            TraceData.WriteInfo(_dir, info);
        }
        catch (IOException e)
        {
            _writeError ??= e.Message;
        }
        // What is really on disk (after a full disk, less than what we handed to the file).
        long onDisk = File.Exists(Path.Combine(_dir, TraceData.EventsFile)) ? new FileInfo(Path.Combine(_dir, TraceData.EventsFile)).Length : 0;
        // One source of truth: the summary says what info.json says, and every reader shows.
        double nsPerTick = end.Tsc > _start.Tsc ? (end.MonotonicNs - _start.MonotonicNs) / (double)(end.Tsc - _start.Tsc) : 0;
        return new RecordSummary(info.TotalEvents, info.TotalLost, info.Threads.Count, _clock.Elapsed, WriteError is null ? _writer.BytesWritten : onDisk, WriteError, info.ShadowOverflow)
        {
            WriterWait = TimeSpan.FromTicks((long)(_tracer.WaitedTicks * nsPerTick / 100)),
            DiskWait = _writer.DrainWaited,
        };
    }

    private ulong _lostNoBuffer;   // read once at Finish: info.json and the summary use the same value

    private TraceInfo BuildInfo(string command, ClockSample end)
    {
        TraceInfo info = BuildBaseInfo(command, end);
        info.TimeFilterNs = TimeFilterNs;
        if (_tracer is GraphTracer graph)
        {
            info.MaxDepth = graph.Options.MaxDepth;
            info.Retval = graph.Options.Retval;
            info.ShadowOverflow = graph.ShadowOverflow;
            if (graph.Options.Mode == GraphMode.Profile)
            {
                info.Profile = graph.ReadProfile(info.Clock.ToCalibration());
                foreach (int site in info.Profile.Select(p => p.Site))
                {
                    _tracedSites.Add(site);
                }
                info.Sites = SitesInfo();
            }
        }
        return info;
    }

    private List<SiteInfo> SitesInfo() => _session.Sites.Where(s => s.Ops.Contains(_tracer) || _tracedSites.Contains(s.Index) || _tracer.LateSites.Contains(s.Index))
        .Select(s => new SiteInfo { Index = s.Index, Function = s.Function, Module = s.Site.ModuleName, Address = s.Address }).ToList();

    private TraceInfo BuildBaseInfo(string command, ClockSample end)
    {
        return new TraceInfo
        {
            Pid = _session.Pid,
            Command = command,
            Started = DateTime.UtcNow - _clock.Elapsed,
            Tracer = _tracer.TracerName,
            EventBytes = _tracer.Buffers.EventBytes,
            Args = _tracer.Buffers.Args,
            Clock = new ClockInfo { StartTsc = _start.Tsc, StartNs = _start.MonotonicNs, EndTsc = end.Tsc, EndNs = end.MonotonicNs },
            Threads = _threads.Values.OrderBy(t => t.Tid).ToList(),
            LostNoBuffer = _lostNoBuffer,
            Sites = SitesInfo(),
            Modules = (_modules ?? _session.Image.Modules.ToList()).Select(Module).ToList(),
        };
    }

    private readonly HashSet<int> _tracedSites = [];

    /// <summary>Remembers which sites the tracer covers (call while it is registered).</summary>
    public void NoteTracedSites(IEnumerable<SiteRecord> sites)
    {
        foreach (SiteRecord s in sites)
        {
            _tracedSites.Add(s.Index);
        }
    }

    /// <summary>A module as a recording carries it: where it was, and its function symbols at runtime addresses.</summary>
    public static ModuleInfo Module(LoadedModule m)
    {
        FunctionSymbols functions = FunctionSymbols.Of(m.Elf);
        var symbols = new List<SymbolInfo>(functions.Count);
        for (int i = 0; i < functions.Count; i++)
        {
            symbols.Add(new SymbolInfo(functions.Start(i) + m.Bias, functions.Size(i), functions.Name(i)));
        }
        return new ModuleInfo { Path = m.Path, Start = m.Start, End = m.End, Symbols = symbols };
    }

    // A full disk fails a write, the flush or the close: the writer keeps the first error.
    private void CloseEvents() => _writer.Complete();

    public void Dispose()
    {
        _tracer.SetWritersWait(false);
        _stopping = true;
        _consumer?.Join();
        _writer.Dispose();   // writes what is left (if Finish did not), closes the file, frees the writer's thread and blocks
    }
}
