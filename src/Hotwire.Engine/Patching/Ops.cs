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
    internal virtual void Prepare(IOpsHost session, IReadOnlyList<SiteRecord> sites) { }

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
