using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Patching;

/// <summary>
/// A consumer of function entries, as ftrace_ops: its filter and notrace globs choose the sites
/// (match = (filter empty or in filter) and not in notrace). At most one ops per site may redirect
/// the function (IPMODIFY).
/// </summary>
public abstract class Ops
{
    protected Ops(string name, IEnumerable<string>? filter = null, IEnumerable<string>? notrace = null)
    {
        Name = name;
        Filter = [.. filter ?? []];
        Notrace = [.. notrace ?? []];
    }

    public string Name { get; }

    /// <summary>Small id within its session (1..63): ops sets are bit masks of these.</summary>
    internal int Id { get; set; }

    public IReadOnlyList<string> Filter { get; }

    public IReadOnlyList<string> Notrace { get; }

    /// <summary>True for an ops that sends calls elsewhere (a live patch, a redirect).</summary>
    public virtual bool Redirects => false;

    /// <summary>
    /// True for an ops meant to outlive the session (a live patch): detach and the agent's
    /// dead-man switch leave its sites redirected instead of restoring them.
    /// </summary>
    public virtual bool Persistent => false;

    internal FunctionFilter BuildFilter() => new(Filter.Concat(Notrace.Select(n => "!" + n.TrimStart('!'))));

    /// <summary>
    /// The sites the filters choose among <paramref name="sites"/>, without a session: a filter
    /// that matches nothing fails here, before anything is injected into the process.
    /// </summary>
    public List<PatchSite> SelectSites(IReadOnlyCollection<PatchSite> sites) => BuildFilter().Select(sites);

    /// <summary>
    /// True when sites of libraries loaded after registration may join it (its filters decide):
    /// its per-site state is sized for <see cref="Session.SiteIdCapacity"/> numbers, not the sites of the moment.
    /// </summary>
    internal virtual bool TakesLateSites => true;

    /// <summary>Numbers of the sites of libraries loaded after registration that joined this ops (recordings name them).</summary>
    internal HashSet<int> LateSites { get; } = [];

    /// <summary>Called once when the ops is registered, before any site calls it.</summary>
    internal virtual void Prepare(Session session, IReadOnlyList<SiteRecord> sites) { }

    /// <summary>How many site-dependent 64-bit values <see cref="EmitEntry"/> uses.</summary>
    internal virtual int ParameterCount => 0;

    /// <summary>The site-dependent values (a counter's address, say) for <paramref name="site"/>.</summary>
    internal virtual ulong Parameter(SiteRecord site, int index) => 0;

    /// <summary>
    /// Code run at the entry of a traced function, inlined into the site's trampoline. It may use
    /// r11 and the flags only: every other register still holds the function's arguments. It must
    /// be position-independent and use each of <paramref name="parameters"/> as one 64-bit
    /// immediate: it is assembled once per ops set and copied for each site with the values filled in.
    /// </summary>
    internal virtual void EmitEntry(Assembler a, ReadOnlySpan<ulong> parameters) { }

    /// <summary>For a redirecting ops: where calls of the site's function go.</summary>
    internal virtual ulong RedirectTarget(SiteRecord site) => throw new InvalidOperationException($"{Name} does not redirect");
}

/// <summary>
/// Counts calls per site in shared memory (for tests and benchmarks, and `hotwire count`). Each
/// thread counts in its own row (found through its tid, as the function tracer finds its buffer),
/// with a plain increment: no locked instruction and no cache line shared between threads. Threads
/// beyond the rows, and processes without glibc's thread descriptor, share one row with `lock inc`.
/// </summary>
public sealed class CountingOps : Ops
{
    private const int Rows = 64;

    private Session? _session;
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

    internal override void Prepare(Session session, IReadOnlyList<SiteRecord> sites)
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

/// <summary>
/// Registers the code Hotwire runs inside a traced function's call must hand back unchanged: all of
/// them. The ABI lets a callee clobber rcx, rsi, rdi and r8–r11, but gcc's -fipa-ra (on from -O2)
/// lets a caller keep values in them across a call to a function it knows leaves them alone (a
/// small leaf in the same file: redis's callers of raxSetData keep r9 and r10 across it). A
/// trampoline or return handler that clobbers one breaks such callers; so each saves what it uses.
/// </summary>
internal static class Preserved
{
    /// <summary>Pops a register saved on entry; with <see cref="TestSwitches.ClobberScratch"/> (teeth only) drops the saved copy and leaves ours.</summary>
    public static void Restore(Assembler a, AssemblerRegister64 register)
    {
        if (TestSwitches.ClobberScratch)
        {
            a.lea(rsp, __[rsp + 8]);
        }
        else
        {
            a.pop(register);
        }
    }
}

/// <summary>Sends every call of one function to another function already present in the target.</summary>
public sealed class RedirectOps : Ops
{
    private readonly ulong _target;

    public RedirectOps(string function, ulong target, string name = "redirect")
        : base(name, [function])
    {
        _target = target;
    }

    /// <summary>Where calls of the function go.</summary>
    public ulong Target => _target;

    public override bool Redirects => true;

    internal override ulong RedirectTarget(SiteRecord site) => _target;
}
