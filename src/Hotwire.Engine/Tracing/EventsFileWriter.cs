using System.Collections.Concurrent;
using System.Diagnostics;

namespace Hotwire.Tracing;

/// <summary>
/// Writes the recorder's packed chunks to <c>events.bin</c> from a thread of its own, so that a
/// write the file system holds up (ext4 stalled one for 84 ms at 150 MB/s here) does not hold up
/// the drain: the threads' rings would fill meanwhile and their events be lost.
/// The drain packs into a block (<see cref="Reserve"/>, <see cref="Commit"/>); a full block, or one
/// handed over by <see cref="Publish"/>, goes to the writer thread and the drain takes a free one.
/// The blocks are allocated once (at most <see cref="MaxBlocks"/>, 8 MiB each): no allocation on the
/// drain path. Only when the writer is that far behind (about 400 ms of events at 150 MB/s) does
/// the drain wait for it, and the wait is counted (<see cref="DrainWaited"/>).
/// </summary>
internal sealed class EventsFileWriter : IDisposable
{
    private const int BlockBytes = 8 << 20;    // one pass over a buffer, packed, at worst (65,536 events of 11 fields)
    private const int MaxBlocks = 8;
    private const int ReadyBlocks = 3;          // allocated and touched before tracing starts

    private readonly FileStream _file;
    private readonly BlockingCollection<(byte[] Block, int Length)> _full = new(new ConcurrentQueue<(byte[], int)>());
    private readonly ConcurrentQueue<byte[]> _free = new();
    private readonly SemaphoreSlim _freeCount = new(0);
    private readonly Thread _thread;
    private byte[] _current;
    private int _fill;
    private int _allocated;
    private long _written;
    private long _waitTicks;
    private volatile string? _error;
    private bool _completed;
    private bool _disposed;

    public EventsFileWriter(FileStream file)
    {
        _file = file;
        // The first blocks' pages are faulted in now, not by the drain while threads write events.
        _current = NewBlock();
        for (_allocated = 1; _allocated < ReadyBlocks; _allocated++)
        {
            _free.Enqueue(NewBlock());
            _freeCount.Release();
        }
        _thread = new Thread(Write) { IsBackground = true, Name = "hotwire-writer" };
        _thread.Start();
    }

    /// <summary>The first write error (a full disk); later blocks are dropped.</summary>
    public string? Error => _error;

    /// <summary>Bytes the file took (written or still buffered in the FileStream).</summary>
    public long BytesWritten => Interlocked.Read(ref _written);

    /// <summary>Bytes packed and not yet handed to the file.</summary>
    public int Pending => _fill;

    /// <summary>Time the drain waited for a free block (the writer that far behind).</summary>
    public TimeSpan DrainWaited => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _waitTicks));

    /// <summary>Room for at least <paramref name="need"/> bytes at the end of the current block.</summary>
    public Span<byte> Reserve(int need)
    {
        if (_current.Length - _fill < need)
        {
            Publish();
            if (_current.Length < need)
            {
                _current = new byte[need]; // one drain larger than a block: that block is larger from now on
            }
        }
        return _current.AsSpan(_fill);
    }

    /// <summary><paramref name="length"/> bytes of the reserved room are packed chunks.</summary>
    public void Commit(int length) => _fill += length;

    /// <summary>Hands what is packed to the writer thread (call when the drain has little to do).</summary>
    public void Publish()
    {
        if (_fill == 0)
        {
            return;
        }
        _full.Add((_current, _fill));
        _fill = 0;
        // The writer adds a block to _free before it counts it: a count taken means a block there.
        if (_freeCount.Wait(0))
        {
            _free.TryDequeue(out byte[]? block);
            _current = block!;
        }
        else if (_allocated < MaxBlocks)
        {
            _allocated++;
            _current = NewBlock();
        }
        else
        {
            long start = Stopwatch.GetTimestamp();
            _freeCount.Wait();
            _free.TryDequeue(out byte[]? block);
            _current = block!;
            Interlocked.Add(ref _waitTicks, Stopwatch.GetTimestamp() - start);
        }
    }

    private static byte[] NewBlock()
    {
        byte[] block = GC.AllocateUninitializedArray<byte>(BlockBytes);
        for (int i = 0; i < block.Length; i += 4096)
        {
            block[i] = 0;
        }
        return block;
    }

    private void Write()
    {
        foreach ((byte[] block, int length) in _full.GetConsumingEnumerable())
        {
            if (TestSwitches.SlowWrite is TimeSpan slow)
            {
                Thread.Sleep(slow);
            }
            if (_error is null)
            {
                try
                {
                    _file.Write(block, 0, length);
                    Interlocked.Add(ref _written, length);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    _error = e.Message;   // a thread of ours must not die of it: the recorder reports it
                }
            }
            _free.Enqueue(block);
            _freeCount.Release();
        }
    }

    /// <summary>Writes what is left, waits for the writer thread and closes the file (its errors kept).</summary>
    public void Complete()
    {
        if (_completed)
        {
            return;
        }
        _completed = true;
        Publish();
        _full.CompleteAdding();
        _thread.Join();
        try
        {
            _file.Flush();
        }
        catch (IOException e)
        {
            _error ??= e.Message;
        }
        try
        {
            _file.Dispose();
        }
        catch (IOException e)
        {
            _error ??= e.Message;
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Complete();
        _full.Dispose();
        _freeCount.Dispose();
    }
}
