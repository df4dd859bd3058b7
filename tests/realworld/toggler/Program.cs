using System.Diagnostics;
using Hotwire.Patching;
using Hotwire.RealWorld;

// toggle --pid N [--toggles 1000] [--relocate] GLOB...   attach, switch counting on/off on every matched function N times, detach
// check-graph DIR [--csv FILE]              rebuild a function_graph recording's calls from events.bin, strictly
// text-equals PID                           every executable mapping of a file in PID holds that file's bytes (nothing of Hotwire's left)
return args.Length > 0 && args[0] == "toggle" ? Toggle(args[1..])
    : args.Length > 1 && args[0] == "check-graph" ? GraphCheck.Run(args[1..])
    : args.Length == 2 && args[0] == "text-equals" ? TextEquals(int.Parse(args[1]))
    : Usage();

static int Usage()
{
    Console.Error.WriteLine("usage: toggler toggle --pid N [--toggles 1000] [--relocate] GLOB...\n       toggler check-graph DIR [--csv FILE]\n       toggler text-equals PID");
    return 2;
}

static int TextEquals(int pid)
{
    using var memory = Hotwire.Memory.ProcessMemory.Open(pid);
    int mappings = 0, differ = 0;
    long bytes = 0;
    foreach (Hotwire.Procfs.MemoryMapping m in Hotwire.Procfs.ProcMaps.Read(pid).Where(m => m.IsExecutable && m.Path.StartsWith('/') && File.Exists(m.Path)))
    {
        byte[] file = File.ReadAllBytes(m.Path);
        if (m.Offset >= (ulong)file.Length)
        {
            continue;
        }
        var live = new byte[Math.Min(m.End - m.Start, (ulong)file.Length - m.Offset)];
        mappings++;
        bytes += live.Length;
        if (!memory.TryRead(m.Start, live))
        {
            Console.WriteLine($"text-equals: {m.Path} at 0x{m.Start:x}: cannot be read");
            differ++;
            continue;
        }
        int at = live.AsSpan().CommonPrefixLength(file.AsSpan((int)m.Offset, live.Length));
        if (at < live.Length)
        {
            Console.WriteLine($"text-equals: {m.Path}: differs from the file at 0x{m.Start + (ulong)at:x} (file offset 0x{m.Offset + (ulong)at:x})");
            differ++;
        }
    }
    Console.WriteLine($"text-equals: pid {pid}: {mappings} executable mappings, {bytes / 1024} KiB, {differ} differ from their files");
    return differ == 0 && mappings > 0 ? 0 : 1;
}

static int Toggle(string[] args)
{
    int pid = 0, toggles = 1000;
    bool relocate = false;
    var globs = new List<string>();
    for (int i = 0; i < args.Length; i++)
    {
        switch (args[i])
        {
            case "--pid": pid = int.Parse(args[++i]); break;
            case "--toggles": toggles = int.Parse(args[++i]); break;
            case "--relocate": relocate = true; break;
            default: globs.Add(args[i]); break;
        }
    }
    if (pid <= 0 || globs.Count == 0 || toggles <= 0)
    {
        return Usage();
    }

    var clock = Stopwatch.StartNew();
    using Session session = Session.Attach(pid, new SessionOptions { RelocateEntries = relocate });
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
