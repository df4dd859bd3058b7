using System.Diagnostics;
using Hotwire.Patching;
using Hotwire.RealWorld;

// toggle --pid N [--toggles 1000] GLOB...   attach, switch counting on/off on every matched function N times, detach
// check-graph DIR [--csv FILE]              rebuild a function_graph recording's calls from events.bin, strictly
return args.Length > 0 && args[0] == "toggle" ? Toggle(args[1..])
    : args.Length > 1 && args[0] == "check-graph" ? GraphCheck.Run(args[1..])
    : Usage();

static int Usage()
{
    Console.Error.WriteLine("usage: toggler toggle --pid N [--toggles 1000] GLOB...\n       toggler check-graph DIR [--csv FILE]");
    return 2;
}

static int Toggle(string[] args)
{
    int pid = 0, toggles = 1000;
    var globs = new List<string>();
    for (int i = 0; i < args.Length; i++)
    {
        switch (args[i])
        {
            case "--pid": pid = int.Parse(args[++i]); break;
            case "--toggles": toggles = int.Parse(args[++i]); break;
            default: globs.Add(args[i]); break;
        }
    }
    if (pid <= 0 || globs.Count == 0 || toggles <= 0)
    {
        return Usage();
    }

    var clock = Stopwatch.StartNew();
    using Session session = Session.Attach(pid);
    TimeSpan attach = clock.Elapsed;
    // One ops stays registered throughout and counts every call; the other is switched on and off.
    var kept = new CountingOps(globs, name: "kept");
    IReadOnlyList<SiteRecord> sites = session.Register(kept);
    var toggled = new CountingOps(globs, name: "toggled");
    int matched = 0;
    clock.Restart();
    for (int i = 0; i < toggles; i++)
    {
        matched = session.Register(toggled).Count;
        session.Unregister(toggled);
    }
    TimeSpan took = clock.Elapsed;
    ulong keptCalls = sites.Aggregate(0UL, (n, s) => n + kept.Count(s));
    ulong toggledCalls = sites.Aggregate(0UL, (n, s) => n + toggled.Count(s));
    var functions = sites.Select(s => s.Function).Distinct().Count();
    Console.WriteLine($"toggler: pid {pid}: {sites.Count} sites ({functions} functions) matched by {string.Join(' ', globs)}; attach {attach.TotalMilliseconds:F0} ms");
    Console.WriteLine($"toggler: {toggles} toggles (on+off) of {matched} sites in {took.TotalMilliseconds:F0} ms ({took.TotalMilliseconds * 1000 / toggles:F0} us per toggle)");
    Console.WriteLine($"toggler: calls counted: kept ops {keptCalls}, toggled ops {toggledCalls}; traps emulated {session.TrapsEmulated}, stale {session.TrapsStale}, chained {session.TrapsChained}; syncs {session.Syncs}; longest stop {session.LongestStop.TotalMilliseconds:F1} ms");
    clock.Restart();
    session.Unregister(kept);
    session.Detach();
    Console.WriteLine($"toggler: detached in {clock.Elapsed.TotalMilliseconds:F0} ms; sites={sites.Count} toggles={toggles} kept_calls={keptCalls} toggled_calls={toggledCalls} traps_emulated={session.TrapsEmulated}");
    return matched == sites.Count && keptCalls > 0 ? 0 : 1;
}
