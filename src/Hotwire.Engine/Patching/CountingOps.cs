using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Patching;

/// <summary>
/// Counts calls per site in shared memory (for tests and benchmarks, and `hotwire count`). Each
/// thread counts in its own row (found through its tid, as the function tracer finds its buffer),
/// with a plain increment: no locked instruction and no cache line shared between threads. Threads
/// beyond the rows, and processes without glibc's thread descriptor, share one row with `lock inc`.
/// </summary>
public sealed class CountingOps : Ops
{
    private const int Rows = 64;

    private IOpsHost? _session;
    private ulong _rowsOffset;      // Rows × sites × 8
    private ulong _sharedOffset;    // sites × 8, locked increments
    private ulong _tableOffset;     // tid → row + 1
    private ulong _nextOffset;      // rows claimed
    private int _tidOffset = -1;
    private int _pidMax;

    public CountingOps(IEnumerable<string>? filter = null, IEnumerable<string>? notrace = null, string name = "count")
        : base(name, filter, notrace)
    {
    }

    internal override void Prepare(IOpsHost session, IReadOnlyList<SiteRecord> sites)
    {
        if (_session is not null)
        {
            return;
        }
        ulong n = (ulong)session.SiteIdCapacity;
        _sharedOffset = session.Heap.Allocate(n * 8, 64);
        try
        {
            _tidOffset = Tracing.ThreadIdentity.TidOffset(session);
            _pidMax = Tracing.TraceBufferOptions.PidMax();
            _nextOffset = session.Heap.Allocate(64, 64);
            _tableOffset = session.Heap.Allocate((ulong)(_pidMax + 1) * 4, 4096);
            _rowsOffset = session.Heap.Allocate(Rows * Stride(n), 4096);
        }
        catch (HotwireException)
        {
            _tidOffset = -1; // no glibc thread descriptor, or no room: every thread uses the locked row
        }
        _session = session;
    }

    // [0] the site's counter in the shared (locked) row; [1] in row "-1" (the table holds row + 1).
    internal override int ParameterCount => _tidOffset < 0 ? 1 : 2;

    internal override ulong Parameter(SiteRecord site, int index) => index == 0
        ? _session!.Heap.Address(_sharedOffset + (ulong)site.Index * 8)
        : _session!.Heap.Address(_rowsOffset + (ulong)site.Index * 8) - RowStride;

    private ulong RowStride => Stride((ulong)_session!.SiteIdCapacity);

    // Rows never share a cache line: two threads counting the same function must not contend.
    private static ulong Stride(ulong sites) => (sites * 8 + 63) & ~63UL;

    internal override void EmitEntry(Assembler a, ReadOnlySpan<ulong> parameters)
    {
        a.push(r11);                                    // kept for the caller (Preserved)
        if (_tidOffset < 0)
        {
            a.mov(r11, parameters[0]);
            a.@lock.inc(__qword_ptr[r11]);
            Preserved.Restore(a, r11);
            return;
        }
        Label ready = a.CreateLabel(), claim = a.CreateLabel(), shared = a.CreateLabel(), done = a.CreateLabel();
        a.push(rax);
        var tids = new Tracing.TidTable(_tidOffset, _pidMax, _session!.Heap.Address(_tableOffset));
        tids.EmitLookup(a, shared, claim);
        a.Label(ref ready);
        a.imul(rax, rax, checked((int)RowStride));
        a.mov(r11, parameters[1]);
        a.inc(__qword_ptr[r11 + rax]);                 // this thread's own counter: no lock needed
        a.jmp(done);
        a.Label(ref claim);                             // the thread's first call here: claim a row
        a.mov(r11, _session.Heap.Address(_nextOffset));
        a.mov(eax, 1);
        a.@lock.xadd(__dword_ptr[r11], eax);
        a.cmp(eax, Rows);
        a.jae(shared);
        a.inc(eax);
        a.push(rdx);
        tids.EmitClaim(a, eax, r11);
        a.pop(rdx);
        a.jmp(ready);
        a.Label(ref shared);
        a.mov(r11, parameters[0]);
        a.@lock.inc(__qword_ptr[r11]);
        a.Label(ref done);
        a.pop(rax);
        Preserved.Restore(a, r11);
    }

    /// <summary>Calls counted at <paramref name="site"/> so far (every thread's row, and the shared one).</summary>
    public ulong Count(SiteRecord site)
    {
        if (_session is null)
        {
            return 0;
        }
        if (_session.IsDetached)
        {
            throw new InvalidOperationException("the session is detached: its counters went with it (read them before Detach)");
        }
        ulong total = _session.Heap.Shared.ReadU64(_sharedOffset + (ulong)site.Index * 8);
        if (_tidOffset >= 0)
        {
            uint rows = Math.Min(_session.Heap.Shared.ReadU32(_nextOffset), Rows);
            for (ulong r = 0; r < rows; r++)
            {
                total += _session.Heap.Shared.ReadU64(_rowsOffset + r * RowStride + (ulong)site.Index * 8);
            }
        }
        return total;
    }

    public ulong Count(string function) => _session is null ? 0 : _session.SitesOf(function).Aggregate(0UL, (n, s) => n + Count(s));
}
