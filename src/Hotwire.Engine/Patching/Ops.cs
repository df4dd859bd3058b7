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

    internal FunctionFilter BuildFilter() => new(Filter.Concat(Notrace.Select(n => "!" + n.TrimStart('!'))));

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

/// <summary>Counts calls per site in shared memory (for tests and benchmarks, and `hotwire count`).</summary>
public sealed class CountingOps : Ops
{
    private Session? _session;
    private ulong _countersOffset;

    public CountingOps(IEnumerable<string>? filter = null, IEnumerable<string>? notrace = null, string name = "count")
        : base(name, filter, notrace)
    {
    }

    internal override void Prepare(Session session, IReadOnlyList<SiteRecord> sites)
    {
        if (_session is null)
        {
            _session = session;
            _countersOffset = session.AllocateData((ulong)session.Sites.Count * 8, 64);
        }
    }

    internal override int ParameterCount => 1;

    internal override ulong Parameter(SiteRecord site, int index) => _session!.DataAddress(_countersOffset + (ulong)site.Index * 8);

    internal override void EmitEntry(Assembler a, ReadOnlySpan<ulong> parameters)
    {
        a.mov(r11, parameters[0]);
        a.@lock.inc(__qword_ptr[r11]);
    }

    /// <summary>Calls counted at <paramref name="site"/> so far.</summary>
    public ulong Count(SiteRecord site) => _session is null ? 0 : _session.Shared.ReadU64(_countersOffset + (ulong)site.Index * 8);

    public ulong Count(string function) => _session is null ? 0 : _session.SitesOf(function).Aggregate(0UL, (n, s) => n + Count(s));
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

    public override bool Redirects => true;

    internal override ulong RedirectTarget(SiteRecord site) => _target;
}
