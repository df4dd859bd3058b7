using Hotwire.Patching;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Tracing;

/// <summary>Sizes of the function tracer's per-thread ring buffers.</summary>
public sealed record TraceBufferOptions(int BufferBytes = 32 << 20, int MaxThreads = 256, int Args = 0)
{
    public const int HeaderBytes = 128;
    public const int Head = 0;      // u64, written by the thread only
    public const int Lost = 8;      // u64, written by the thread only
    public const int Tid = 16;      // u32, set when the thread claims the buffer
    public const int Overflow = 24; // u64, calls the graph tracer could not follow: the shadow stack was full
    public const int CachedTail = 32; // u64, the thread's last look at Tail: Tail's line is read only when the ring seems full
    public const int Busy = 40;     // u8, the thread is writing an event: a signal handler's traced call meanwhile is dropped (counted lost)
    public const int LostReported = 48; // u64, written by the thread only: Lost as of its last event (an event written while Lost differs carries the difference)
    public const int Waited = 56;   // u64, written by the thread only: TSC ticks it waited for room (--no-drop)
    public const int Tail = 64;     // u64, written by Hotwire only (own cache line)

    /// <summary>Events carry an info word after the site (the graph tracer's kind and depth).</summary>
    public bool Info { get; init; }

    /// <summary>
    /// uftrace's behaviour: a thread whose buffer is full waits for room instead of dropping the
    /// event — while a recorder drains (it withdraws the wait when it stops), never once Hotwire is
    /// gone (the dead-man switch), and never more than about a second per event.
    /// </summary>
    public bool NoDrop { get; init; }

    public int EventBytes => EventLayout.Bytes(FixedFields, Args);

    /// <summary>The u64 fields of an event before its arguments (<see cref="TraceInfo.FixedFields"/>).</summary>
    public int FixedFields => Info ? EventLayout.GraphFields : EventLayout.FunctionFields;

    /// <summary>Events a buffer holds: a power of two, so the ring index is a mask.</summary>
    public long Capacity => 1L << (int)Math.Floor(Math.Log2((BufferBytes - HeaderBytes) / (double)EventBytes));

    /// <summary>Shared memory the tracer needs: the buffers and a tid → buffer table.</summary>
    public static ulong SharedBytes(TraceBufferOptions o) => (ulong)o.MaxThreads * (ulong)o.BufferBytes + (ulong)(PidMax() + 1) * 4 + 4096;

    /// <summary>
    /// Buffers to reserve: one per thread the process has now, twice over for threads to come, and
    /// at least 1,024 (a launched program has one thread at first). The reservation is address
    /// space: a buffer's pages are memory only once its thread writes events.
    /// </summary>
    public static int ThreadsFor(int? pid)
    {
        int threads = 1;
        if (pid is int p)
        {
            try
            {
                threads = Directory.GetDirectories($"/proc/{p}/task").Length;
            }
            catch (IOException)
            {
            }
        }
        return (int)Math.Max(1024, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)threads * 2));
    }

    public static int PidMax()
    {
        try
        {
            return int.Parse(File.ReadAllText("/proc/sys/kernel/pid_max").Trim());
        }
        catch (IOException)
        {
            return 4 << 20;
        }
    }

    public void Validate()
    {
        if (!TryValidate(out string? error))
        {
            throw new HotwireException(error);
        }
    }

    public bool TryValidate([System.Diagnostics.CodeAnalysis.NotNullWhen(false)] out string? error)
    {
        error = BufferBytes < 4096 || (BufferBytes & (BufferBytes - 1)) != 0 ? $"--buffer-size must be a power of two of at least 4K, not {BufferBytes}"
            : Args is < 0 or > 6 ? $"--args takes 0 to 6 (the integer argument registers), not {Args}"
            : null;
        return error is null;
    }
}

/// <summary>
/// A tracer that streams events through per-thread single-producer ring buffers in shared memory
/// (the function and function_graph tracers): buffers, the tid → buffer table, and the counters
/// Hotwire reads. A thread claims a buffer with one atomic add at its first event.
/// </summary>
public abstract class RingTracer : Ops
{
    private IOpsHost? _session;
    private protected ulong _tableOffset;
    private protected ulong _buffersOffset;
    private protected ulong _nextOffset;
    private protected ulong _freeOffset;   // bitmap: buffers whose thread exited, given back by the recorder
    private protected int _tidOffset;
    private protected int _pidMax;

    private protected RingTracer(string name, TraceBufferOptions buffers, IEnumerable<string>? filter, IEnumerable<string>? notrace)
        : base(name, filter, notrace)
    {
        buffers.Validate();
        Buffers = buffers;
    }

    public TraceBufferOptions Buffers { get; }

    /// <summary>The tracer's name in recordings (<see cref="Tracers"/>).</summary>
    public abstract string TracerName { get; }

    internal IOpsHost Session => _session ?? throw new InvalidOperationException("the tracer is not registered");

    /// <summary>The shared memory its buffers, tables and counters are in.</summary>
    internal SharedHeap Heap => _session?.Heap ?? throw new InvalidOperationException("the tracer is not registered");

    internal override void Prepare(IOpsHost session, IReadOnlyList<SiteRecord> sites)
    {
        if (_session is not null)
        {
            return;
        }
        _tidOffset = ThreadIdentity.TidOffset(session);
        _pidMax = TraceBufferOptions.PidMax();
        _nextOffset = session.Heap.Allocate(64, 64);
        _freeOffset = session.Heap.Allocate((ulong)FreeWords * 8, 64);
        _tableOffset = session.Heap.Allocate((ulong)(_pidMax + 1) * 4, 4096);
        _buffersOffset = session.Heap.Allocate((ulong)Buffers.MaxThreads * (ulong)Buffers.BufferBytes, 4096);
        session.Heap.DiscardOnDetach(_buffersOffset, (ulong)Buffers.MaxThreads * (ulong)Buffers.BufferBytes);
        _session = session;
        if (Buffers.NoDrop)
        {
            _waitRoutine = session.PlaceCode(at => EmitWaitRoutine(at, session.Heap.Address(0)));
        }
        PrepareMore(session);
    }

    private ulong _waitRoutine;

    // u64 in the tracer's counters line: 1 while a recorder drains and writers may wait for room.
    private ulong WaitFlag => _nextOffset + 16;

    /// <summary>Lets writers wait for room (--no-drop), or makes the waiting ones give up (the recorder stops).</summary>
    internal void SetWritersWait(bool on)
    {
        if (_session is not null && Buffers.NoDrop)
        {
            Volatile.Write(ref Heap.Shared.At<ulong>(WaitFlag), on ? 1UL : 0UL);
        }
    }

    /// <summary>Events dropped so far by the threads of the buffers in use, and for want of a buffer (a benchmark takes it before and after a run).</summary>
    public ulong LostSoFar
    {
        get
        {
            ulong n = LostNoBuffer;
            for (int i = 0; _session is not null && i < BuffersInUse; i++)
            {
                n += Heap.Shared.ReadU64(BufferOffset(i) + TraceBufferOptions.Lost);
            }
            return n;
        }
    }

    /// <summary>TSC ticks the threads spent waiting for room, summed over the buffers (--no-drop).</summary>
    public ulong WaitedTicks
    {
        get
        {
            ulong n = 0;
            for (int i = 0; _session is not null && i < BuffersInUse; i++)
            {
                n += Heap.Shared.ReadU64(BufferOffset(i) + TraceBufferOptions.Waited);
            }
            return n;
        }
    }

    /// <summary>
    /// The wait for room of --no-drop, called from a full reserve with the buffer's address pushed.
    /// Keeps every register; returns CF = 0 when there is room now, CF = 1 to drop the event
    /// (Hotwire gone, the recorder stopped, or about a second waited). Spins briefly, then yields
    /// the CPU (sched_yield) between looks, so that a recorder on the same core can run.
    /// </summary>
    private byte[] EmitWaitRoutine(ulong at, ulong header)
    {
        const int Spins = 200, MaxYields = 2_000_000, SchedYield = 24;
        var a = new Assembler(64);
        Label loop = a.CreateLabel(), room = a.CreateLabel(), giveUp = a.CreateLabel(), spin = a.CreateLabel(), account = a.CreateLabel();
        a.push(rax);
        a.push(rcx);
        a.push(rdx);
        a.push(rsi);
        a.push(rdi);
        a.push(r8);
        a.push(r9);
        a.push(r11);
        a.mov(r8, __qword_ptr[rsp + 72]);                 // the buffer (above 8 pushes and our return)
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(rsi, rax);                                  // when the wait began
        a.mov(r9d, MaxYields);
        a.Label(ref loop);
        a.mov(edi, Spins);
        a.Label(ref spin);
        if (!TestSwitches.WaitOnDeadRecorder)
        {
            a.mov(rax, header);
            a.cmp(__qword_ptr[rax + Agent.AgentLayout.DeadManFired], 0);
            a.jne(giveUp);
        }
        a.mov(rax, Heap.Address(WaitFlag));
        a.cmp(__qword_ptr[rax], 0);
        a.je(giveUp);
        a.mov(rax, __qword_ptr[r8 + TraceBufferOptions.Tail]);
        a.mov(__qword_ptr[r8 + TraceBufferOptions.CachedTail], rax);
        a.mov(rcx, __qword_ptr[r8 + TraceBufferOptions.Head]);
        a.sub(rcx, rax);
        a.cmp(rcx, (int)Buffers.Capacity);
        a.jb(room);
        a.pause();
        a.dec(edi);
        a.jnz(spin);
        a.dec(r9d);
        a.jz(giveUp);
        a.mov(eax, SchedYield);
        a.syscall();
        a.jmp(loop);
        a.Label(ref room);
        a.xor(edi, edi);                                  // edi = 0: room
        a.jmp(account);
        a.Label(ref giveUp);
        a.mov(edi, 1);
        a.Label(ref account);
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.sub(rax, rsi);
        a.add(__qword_ptr[r8 + TraceBufferOptions.Waited], rax);
        a.bt(edi, 0);                                     // CF = edi's bit 0; pops keep the flags
        a.pop(r11);
        a.pop(r9);
        a.pop(r8);
        a.pop(rdi);
        a.pop(rsi);
        a.pop(rdx);
        a.pop(rcx);
        a.pop(rax);
        a.ret();
        var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), at);
        return stream.ToArray();
    }

    /// <summary>
    /// head = the buffer's head, or jump to <paramref name="full"/>. The producer compares with its
    /// own copy of the consumer's tail and reads the real one (a cache line Hotwire writes) only
    /// when the ring looks full: no cross-core traffic per event.
    /// </summary>
    private protected void EmitReserve(Assembler a, AssemblerRegister64 buffer, AssemblerRegister64 head, AssemblerRegister64 scratch, Label full)
    {
        Label ok = a.CreateLabel(), again = a.CreateLabel();
        a.Label(ref again);
        a.mov(head, __qword_ptr[buffer + TraceBufferOptions.Head]);
        a.mov(scratch, head);
        a.sub(scratch, __qword_ptr[buffer + TraceBufferOptions.CachedTail]);
        a.cmp(scratch, (int)Buffers.Capacity);
        a.jb(ok);
        a.mov(scratch, __qword_ptr[buffer + TraceBufferOptions.Tail]);
        a.mov(__qword_ptr[buffer + TraceBufferOptions.CachedTail], scratch);
        a.mov(scratch, head);
        a.sub(scratch, __qword_ptr[buffer + TraceBufferOptions.CachedTail]);
        a.cmp(scratch, (int)Buffers.Capacity);
        if (!Buffers.NoDrop)
        {
            a.jae(full);
            a.Label(ref ok);
            return;
        }
        // --no-drop: wait for room, then reserve again (the routine keeps every register), or drop.
        Label routine = a.CreateLabel();
        a.jb(ok);
        a.push(buffer);
        a.call(__qword_ptr[routine]);                     // through a literal: any distance, position-independent
        a.lea(rsp, __[rsp + 8]);                          // keeps CF
        a.jae(again);                                     // CF = 0: room
        a.jmp(full);
        a.Label(ref routine);
        a.dq(_waitRoutine);
        a.Label(ref ok);
    }

    /// <summary>
    /// Before an event is published: if events were dropped since the thread's last one (Lost moved
    /// past LostReported), jump to <paramref name="mark"/>. One compare on the line Head is on.
    /// Leaves Lost in <paramref name="lost"/>.
    /// </summary>
    private protected static void EmitLossCheck(Assembler a, AssemblerRegister64 buffer, AssemblerRegister64 lost, Label mark)
    {
        a.mov(lost, __qword_ptr[buffer + TraceBufferOptions.Lost]);
        a.cmp(lost, __qword_ptr[buffer + TraceBufferOptions.LostReported]);
        a.jne(mark);
    }

    /// <summary>
    /// Out of line, after <see cref="EmitLossCheck"/>: puts the number of events dropped just
    /// before this one (at most 2^32 − 1) in the high half of <paramref name="field"/> (the event's
    /// site or info word), catches LostReported up, and goes back to <paramref name="publish"/>.
    /// A signal handler that drops an event between the check and the store leaves Lost ahead:
    /// the thread's next event reports it.
    /// </summary>
    private protected static void EmitLossMark(Assembler a, Label mark, AssemblerRegister64 buffer, AssemblerMemoryOperand field,
        AssemblerRegister64 lost, AssemblerRegister64 scratch, Label publish)
    {
        a.Label(ref mark);
        a.mov(scratch, lost);
        a.sub(lost, __qword_ptr[buffer + TraceBufferOptions.LostReported]);
        a.mov(__qword_ptr[buffer + TraceBufferOptions.LostReported], scratch);
        a.mov(scratch, 0xFFFF_FFFFUL);
        a.cmp(lost, scratch);
        a.cmova(lost, scratch);
        a.shl(lost, 32);
        a.or(field, lost);
        a.jmp(publish);
    }

    /// <summary>Whatever else the tracer needs, once, after the buffers exist.</summary>
    private protected virtual void PrepareMore(IOpsHost session) { }

    private protected int FreeWords => (Buffers.MaxThreads + 63) / 64;

    /// <summary>Whether the tracer's claim path takes back buffers given back by <see cref="Release"/>.</summary>
    public virtual bool ReusesBuffers => false;

    /// <summary>
    /// Gives buffer <paramref name="index"/> back for another thread: its thread has exited and
    /// the recorder has drained it. The tid table no longer points at it; its header is reset;
    /// then its bit is set, and a new thread's first event may claim it.
    /// </summary>
    internal void Release(int index, int tid)
    {
        Interlocked.CompareExchange(ref Heap.Shared.At<uint>(_tableOffset + (ulong)tid * 4), 0, (uint)index + 1);
        ulong b = BufferOffset(index);
        foreach (int field in new[] { TraceBufferOptions.Head, TraceBufferOptions.Tail, TraceBufferOptions.CachedTail, TraceBufferOptions.Lost, TraceBufferOptions.LostReported, TraceBufferOptions.Overflow })
        {
            Heap.Shared.WriteU64(b + (ulong)field, 0);
        }
        Heap.Shared.WriteU32(b + TraceBufferOptions.Tid, 0);
        Heap.Shared.At<byte>(b + TraceBufferOptions.Busy) = 0;
        Interlocked.Or(ref Heap.Shared.At<ulong>(_freeOffset + (ulong)(index / 64) * 8), 1UL << (index % 64));
    }

    /// <summary>
    /// The claim of a buffer whose fresh ones ran out: take a released one (a set bit of the
    /// bitmap, cleared with lock btr; a lost race rescans the word). eax = index, or jump to
    /// <paramref name="none"/>. Uses r11, rcx, rdx.
    /// </summary>
    private protected void EmitClaimReleased(Assembler a, Label none)
    {
        Label scan = a.CreateLabel(), nextWord = a.CreateLabel(), got = a.CreateLabel();
        a.mov(r11, Heap.Address(_freeOffset));
        a.xor(ecx, ecx);
        a.Label(ref scan);
        a.cmp(ecx, FreeWords);
        a.jae(none);
        a.mov(rax, __qword_ptr[r11 + rcx * 8]);
        a.test(rax, rax);
        a.jz(nextWord);
        a.bsf(rdx, rax);
        a.@lock.btr(__qword_ptr[r11 + rcx * 8], rdx);
        a.jc(got);
        a.jmp(scan);                                   // another thread took it: look again
        a.Label(ref nextWord);
        a.inc(ecx);
        a.jmp(scan);
        a.Label(ref got);
        a.mov(eax, ecx);
        a.shl(eax, 6);
        a.add(eax, edx);
    }

    /// <summary>Buffers claimed by threads so far.</summary>
    public int BuffersInUse => _session is null ? 0 : (int)Math.Min(Heap.Shared.ReadU32(_nextOffset), (uint)Buffers.MaxThreads);

    /// <summary>Events dropped because more threads came than there are buffers.</summary>
    public ulong LostNoBuffer => _session is null ? 0 : Heap.Shared.ReadU64(_nextOffset + 8);

    /// <summary>Where buffer <paramref name="index"/> lives in Hotwire's mapping.</summary>
    internal ulong BufferOffset(int index) => _buffersOffset + (ulong)index * (ulong)Buffers.BufferBytes;

    /// <summary>Calls the graph tracer could not follow because a thread's shadow stack was full.</summary>
    public ulong ShadowOverflow
    {
        get
        {
            ulong n = 0;
            for (int i = 0; i < BuffersInUse; i++)
            {
                n += Heap.Shared.ReadU64(BufferOffset(i) + TraceBufferOptions.Overflow);
            }
            return n;
        }
    }
}

/// <summary>
/// The function tracer: at each traced function's entry, one event — rdtsc, the site, the caller's
/// return address, optionally the first integer arguments — into the calling thread's
/// single-producer ring buffer in shared memory. It never blocks and calls nothing: a full buffer
/// drops the event and counts it in the buffer. A thread finds its buffer by its kernel tid, read
/// from glibc's thread descriptor at the offset glibc publishes for debuggers
/// (<c>_thread_db_pthread_tid</c>), through a tid-indexed table; the first event of a thread claims
/// a buffer with one atomic add.
/// </summary>
public sealed class FunctionTracer : RingTracer
{
    public FunctionTracer(TraceBufferOptions buffers, IEnumerable<string>? filter = null, IEnumerable<string>? notrace = null)
        : base("function", buffers, filter, notrace)
    {
    }

    public override string TracerName => Tracers.Function;

    public override bool ReusesBuffers => true;

    internal override int ParameterCount => 1;

    internal override ulong Parameter(SiteRecord site, int index) => (ulong)site.Index;

    internal override void EmitEntry(Assembler a, ReadOnlySpan<ulong> parameters)
    {
        IOpsHost s = Session;
        int shift = System.Numerics.BitOperations.Log2((uint)Buffers.BufferBytes);
        ulong table = s.Heap.Address(_tableOffset);
        ulong buffersMinusOne = s.Heap.Address(_buffersOffset) - (ulong)Buffers.BufferBytes; // table holds index + 1
        ulong next = s.Heap.Address(_nextOffset);
        long capacity = Buffers.Capacity;
        int data = TraceBufferOptions.HeaderBytes;
        Label ready = a.CreateLabel(), slow = a.CreateLabel(), full = a.CreateLabel(), nested = a.CreateLabel(), noBuffer = a.CreateLabel(), done = a.CreateLabel(),
            claimed = a.CreateLabel(), mark = a.CreateLabel(), publish = a.CreateLabel();

        a.push(r11);                                       // kept for the caller (Preserved)
        a.push(rax);
        a.push(rdx);
        a.push(rcx);
        var tids = new TidTable(_tidOffset, _pidMax, table);
        tids.EmitLookup(a, noBuffer, slow);
        a.Label(ref ready);
        a.shl(rax, (byte)shift);
        a.mov(r11, buffersMinusOne);
        a.add(r11, rax);                                   // r11 = this thread's buffer
        a.cmp(__byte_ptr[r11 + TraceBufferOptions.Busy], 0);
        a.jne(nested);                                     // a signal handler interrupted our own write
        a.mov(__byte_ptr[r11 + TraceBufferOptions.Busy], (byte)1);
        EmitReserve(a, r11, rcx, rax, full);
        a.and(ecx, (int)(capacity - 1));
        a.imul(rcx, rcx, Buffers.EventBytes);
        a.add(rcx, r11);                                   // rcx + data = the slot
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(__qword_ptr[rcx + data + EventLayout.Tsc], rax);
        a.mov(rax, __qword_ptr[rsp + 40]);                 // above our 4 pushes and our return: the caller's return address
        a.mov(__qword_ptr[rcx + data + EventLayout.Value], rax);
        a.mov(rax, parameters[0]);                         // site index
        a.mov(__qword_ptr[rcx + data + EventLayout.Site], rax);
        for (int i = 0; i < Buffers.Args; i++)
        {
            int at = data + EventLayout.ArgsAt(EventLayout.FunctionFields) + 8 * i;
            switch (i)
            {
                case 0: a.mov(__qword_ptr[rcx + at], rdi); break;
                case 1: a.mov(__qword_ptr[rcx + at], rsi); break;
                case 2: a.mov(rax, __qword_ptr[rsp + 8]); a.mov(__qword_ptr[rcx + at], rax); break;  // saved rdx
                case 3: a.mov(rax, __qword_ptr[rsp]); a.mov(__qword_ptr[rcx + at], rax); break;      // saved rcx
                case 4: a.mov(__qword_ptr[rcx + at], r8); break;
                default: a.mov(__qword_ptr[rcx + at], r9); break;
            }
        }
        EmitLossCheck(a, r11, rax, mark);
        a.Label(ref publish);
        a.inc(__qword_ptr[r11 + TraceBufferOptions.Head]); // publish: x86 keeps our stores in order
        a.mov(__byte_ptr[r11 + TraceBufferOptions.Busy], (byte)0);
        a.jmp(done);

        EmitLossMark(a, mark, r11, __qword_ptr[rcx + data + EventLayout.Site], rax, rdx, publish); // the site's high half

        a.Label(ref full);
        a.mov(__byte_ptr[r11 + TraceBufferOptions.Busy], (byte)0);
        a.Label(ref nested);
        a.inc(__qword_ptr[r11 + TraceBufferOptions.Lost]);
        a.jmp(done);

        a.Label(ref slow);                                  // the thread's first event: claim a buffer
        a.mov(r11, next);
        a.mov(eax, 1);
        a.@lock.xadd(__dword_ptr[r11], eax);
        a.cmp(eax, Buffers.MaxThreads);
        a.jb(claimed);
        EmitClaimReleased(a, noBuffer);                     // all were claimed once: one an exited thread gave back
        a.Label(ref claimed);
        a.inc(eax);
        tids.EmitClaim(a, eax, r11);
        a.mov(rcx, rax);
        a.shl(rcx, (byte)shift);
        a.mov(r11, buffersMinusOne);
        a.mov(__dword_ptr[r11 + rcx + TraceBufferOptions.Tid], edx);
        a.jmp(ready);

        a.Label(ref noBuffer);
        a.mov(r11, next);
        a.@lock.inc(__qword_ptr[r11 + 8]);

        a.Label(ref done);
        a.pop(rcx);
        a.pop(rdx);
        a.pop(rax);
        Preserved.Restore(a, r11);
    }
}
