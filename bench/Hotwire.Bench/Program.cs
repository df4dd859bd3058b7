using System.Diagnostics;
using System.Globalization;
using Hotwire.Patching;
using Hotwire.Tracing;

// Engine benchmarks (called by bench/run): prints markdown table rows on stdout.
// Usage: Hotwire.Bench BUILD_DIR   (BUILD_DIR holds micro-plain, micro-nop5, micro-sled, many)
string build = args[0];
string? only = args.Length > 1 ? args[1] : null; // run one section: calls, uprobe, tracers, sustained, nodrop, livepatch, attach, processes, patch, relocated
bool Want(string section) => only is null || only == section;
const int Runs = 5;
var rows = new List<string>();

// ---- added cost per call: untraced binary vs disabled sites vs counting vs redirect ----
const long Calls = 100_000_000;
double Ns(Target t, int threads) => double.Parse(t.Ask($"run {Calls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture);

if (Want("calls"))
using (var plain = Target.Start(Path.Combine(build, "micro-plain")))
using (var nop5 = Target.Start(Path.Combine(build, "micro-nop5")))
using (var counted = Target.Start(Path.Combine(build, "micro-nop5")))
using (var redirected = Target.Start(Path.Combine(build, "micro-nop5")))
{
    using Session sc = Session.Attach(counted.Pid);
    sc.Register(new CountingOps(["leaf"]));
    using Session sr = Session.Attach(redirected.Pid);
    var module = sr.Image.Modules.First(m => m.Sites.Any(s => s.Function == "leaf"));
    sr.Register(new RedirectOps("leaf", module.Elf.ReadSymbols(false).Single(s => s.Name == "leaf2").Value + module.Bias));
    foreach (int threads in new[] { 1, 2 })
    {
        var p = new List<double>(); var n = new List<double>(); var c = new List<double>(); var r = new List<double>();
        for (int i = 0; i < Runs; i++)
        {
            p.Add(Ns(plain, threads)); n.Add(Ns(nop5, threads)); c.Add(Ns(counted, threads)); r.Add(Ns(redirected, threads));
        }
        double mp = Median(p), mn = Median(n), mc = Median(c), mr = Median(r);
        rows.Add($"| call of a noinline leaf, {threads} thread(s) | — | untraced binary | {mp:F2} ns | — | — |");
        rows.Add($"| disabled site (NOP5), added per call, {threads} thread(s) | {mn - mp:+0.00;-0.00} ns | untraced binary | {mp:F2} ns | {mn / mp:F2} | not measurable |");
        rows.Add($"| counting ops, added per call, {threads} thread(s) | {mc - mp:+0.00;-0.00} ns | untraced binary | {mp:F2} ns | {mc / mp:F2} | ≤ 5 ns |");
        rows.Add($"| redirect (jmp to a copy of the leaf), added per call, {threads} thread(s) | {mr - mp:+0.00;-0.00} ns | untraced binary | {mp:F2} ns | {mr / mp:F2} | ≤ 2 ns |");
    }
}

// ---- anchor: a kernel uprobe on the same NOP5 site (tracefs), per call ----
const string UprobeEvents = "/sys/kernel/tracing/uprobe_events";
if (!Want("uprobe"))
{
}
else if (File.Exists(UprobeEvents))
{
    string path = Path.Combine(build, "micro-nop5");
    Hotwire.Elf.ElfFile elf = Hotwire.Elf.ElfFile.Load(path);
    ulong leafAt = elf.ReadSymbols(false).Single(x => x.Name == "leaf").Value;
    var seg = elf.Segments.First(x => x.Type == Hotwire.Elf.ElfFile.PT_LOAD && leafAt >= x.VirtualAddress && leafAt < x.VirtualAddress + x.FileSize);
    ulong offset = leafAt - seg.VirtualAddress + seg.Offset;
    using var plain = Target.Start(Path.Combine(build, "micro-plain"));
    using var probed = Target.Start(path);
    try
    {
        File.AppendAllText(UprobeEvents, $"p:hotwire_bench/leaf {path}:0x{offset:x}\n");
        File.WriteAllText("/sys/kernel/tracing/events/hotwire_bench/leaf/enable", "1");
        foreach (int threads in new[] { 1, 2 })
        {
            const long ProbeCalls = 200_000;
            var p = new List<double>(); var t = new List<double>();
            for (int i = 0; i < Runs; i++)
            {
                p.Add(double.Parse(plain.Ask($"run {ProbeCalls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture));
                t.Add(double.Parse(probed.Ask($"run {ProbeCalls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture));
            }
            rows.Add($"| kernel uprobe on the NOP5 site (tracefs event enabled), added per call, {threads} thread(s) | — | uprobe, kernel {Environment.OSVersion.Version} | {Median(t) - Median(p):F1} ns | — | — |");
            Environment.SetEnvironmentVariable($"UPROBE_NS_{threads}", (Median(t) - Median(p)).ToString(CultureInfo.InvariantCulture));
        }
    }
    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
    {
        rows.Add($"| kernel uprobe on the NOP5 site | — | not run: {e.Message} | — | — | — |");
    }
    finally
    {
        try
        {
            File.WriteAllText("/sys/kernel/tracing/events/hotwire_bench/leaf/enable", "0");
            File.AppendAllText(UprobeEvents, "-:hotwire_bench/leaf\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
else
{
    rows.Add("| kernel uprobe on the NOP5 site | — | not run: no tracefs at /sys/kernel/tracing (mount -t tracefs nodev /sys/kernel/tracing, as root) | — | — | — |");
}

// ---- patch latency: 1, 256 and 50,000 sites, first time (trampolines generated) and after; before the
// sections that write gigabytes, whose writeback would still be busy ----
if (Want("patch"))
{
    // The command is compiled ahead of time; this process JIT-compiles, in tiers. One enable and
    // disable of every site in another process first, and time for the tiered JIT to compile the
    // engine's hot methods fully: the figures below are then the engine's work, not the JIT's.
    using var warmup = Target.Start(Path.Combine(build, "many"), "idle");
    using Session w = Session.Attach(warmup.Pid);
    for (int i = 0; i < 3; i++)
    {
        var all = new CountingOps(["f*"]);
        w.Register(all);
        w.Unregister(all);
        Thread.Sleep(300);
    }
    w.Detach();
}
if (Want("patch"))
using (var many = Target.Start(Path.Combine(build, "many"), "idle"))
{
    using Session s = Session.Attach(many.Pid);
    foreach (int n in new[] { 1, 256, 50_000 })
    {
        (double cold, double warm, double off, double warmOff, _) = EnableDisable(s, new CountingOps(n == 50_000 ? ["f*"] : Enumerable.Range(0, n).Select(i => $"f{i}")));
        rows.Add($"| enable {n} sites, first time / after; disable, first time / after | {cold:F2} / {warm:F2}; {off:F2} / {warmOff:F2} ms | — | — | — | {(n == 50_000 ? "≤ 20 / ≤ 5; ≤ 5 ms" : "—")} |");
    }
}
if (Want("patch"))
using (var idle = Target.Start(Path.Combine(build, "micro-nop5")))
{
    using Session s = Session.Attach(idle.Pid);
    var ops = new CountingOps(["leaf"]);
    s.Register(ops);
    s.Unregister(ops);
    const int Toggles = 2000;
    var clock = Stopwatch.StartNew();
    for (int i = 0; i < Toggles; i++)
    {
        s.Register(ops);
        s.Unregister(ops);
    }
    rows.Add($"| one site toggle (call↔nop, 3 syncs), idle target | {clock.Elapsed.TotalMicroseconds / (2 * Toggles):F1} µs | — | — | — | ≤ 100 µs |");
}
// ---- the tracers: added cost per traced call (buffers large enough that nothing is lost) ----
foreach ((string label, string goal, long tracedCalls, Func<TraceBufferOptions, RingTracer> make) in new (string, string, long, Func<TraceBufferOptions, RingTracer>)[]
{
    ("function tracer", "≤ 18 ns", 1_000_000, b => new FunctionTracer(b, ["leaf"])),
    ("function_graph tracer", "≤ 35 ns", 500_000, b => new GraphTracer(b, new GraphOptions(), ["leaf"])),
    ("profile tracer", "≤ 30 ns", 1_000_000, b => new GraphTracer(b, new GraphOptions(GraphMode.Profile), ["leaf"])),
}.Where(_ => Want("tracers")))
{
    var buffers = new TraceBufferOptions(BufferBytes: 64 << 20, MaxThreads: 8);
    // (a first unmeasured run per thread count touches the buffers' pages once)
    using var plain = Target.Start(Path.Combine(build, "micro-plain"));
    using var traced = Target.Start(Path.Combine(build, "micro-nop5"));
    (Session s, RingTracer tracer, Recorder recorder, string dir) = TraceLeaf(traced, make(buffers), "calls");
    using Session session = s;
    var perThreads = new Dictionary<int, double>();
    foreach (int threads in new[] { 1, 2 })
    {
        var p = new List<double>();
        var t = new List<double>();
        traced.Ask($"run {tracedCalls} {threads}");
        Thread.Sleep(200);
        for (int i = 0; i < Runs; i++)
        {
            p.Add(double.Parse(plain.Ask($"run {tracedCalls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture));
            t.Add(double.Parse(traced.Ask($"run {tracedCalls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture));
            Thread.Sleep(200); // let the recorder drain, so that no run finds a full buffer
        }
        perThreads[threads] = Median(t) - Median(p);
        // uftrace's figure for the same leaf (entry and exit recorded), measured by bench/run in the same run.
        string anchor = double.TryParse(Environment.GetEnvironmentVariable($"UFTRACE_NS_{threads}"), CultureInfo.InvariantCulture, out double u)
            ? $"`uftrace record`, added per call | {u - Median(p):F1} ns | {(Median(t) - Median(p)) / (u - Median(p)):F3}"
            : "uftrace | not run | —";
        rows.Add($"| {label}, added per traced call, {threads} thread(s) | {Median(t) - Median(p):+0.00;-0.00} ns | {anchor} | {goal} |");
        if (double.TryParse(Environment.GetEnvironmentVariable($"UPROBE_NS_{threads}"), CultureInfo.InvariantCulture, out double up))
        {
            rows.Add($"| {label} vs a kernel uprobe, {threads} thread(s) | {Median(t) - Median(p):+0.00;-0.00} ns | kernel uprobe, added per call | {up:F1} ns | {(Median(t) - Median(p)) / up:F3} | — |");
        }
    }
    string uftraceScaling = double.TryParse(Environment.GetEnvironmentVariable("UFTRACE_NS_1"), CultureInfo.InvariantCulture, out double u1)
        && double.TryParse(Environment.GetEnvironmentVariable("UFTRACE_NS_2"), CultureInfo.InvariantCulture, out double u2) ? $"uftrace 2 vs 1 thread: {u2 / u1:F2}×" : "uftrace not run";
    rows.Add($"| {label}, 2 threads vs 1 thread (per-call cost ratio) | {perThreads[2] / perThreads[1]:F2}× | {uftraceScaling} | — | — | ≤ 1.2× |");
    s.Unregister(tracer);
    RecordSummary sum = recorder.Finish("micro");
    if (tracer is GraphTracer { Options.Mode: GraphMode.Profile })
    {
        TraceInfo info = TraceData.ReadInfo(dir);
        ulong calls = info.Profile!.Aggregate(0UL, (n, e) => n + e.Calls);
        rows.Add($"| profile tracer, calls counted in the runs above | {calls:N0} (expected {(Runs + 1) * 3 * tracedCalls:N0}) | — | — | — | exact |");
    }
    else
    {
        rows.Add($"| {label}, events of the runs above written to hotwire.data | {sum.Events:N0} events, {sum.Lost} lost | — | — | — | 0 lost |");
    }
    recorder.Dispose();
    s.Detach();
    Directory.Delete(dir, recursive: true);
}

// ---- sustained, ~10 s each, default buffers: one thread calling the traced leaf flat out; then paced
// at #17's rates (function tracer 22 M calls/s, function_graph 11 M calls/s = 22 M events/s; the
// rate is the process's total, split between 1 or 2 threads), the pause calibrated on the traced target ----
foreach ((string label, double callsPerSecond, int threads, Func<TraceBufferOptions, RingTracer> make) in new (string, double, int, Func<TraceBufferOptions, RingTracer>)[]
{
    ("function tracer", 0, 1, b => new FunctionTracer(b, ["leaf"])),
    ("function tracer", 22e6, 1, b => new FunctionTracer(b, ["leaf"])),
    ("function tracer", 22e6, 2, b => new FunctionTracer(b, ["leaf"])),
    ("function_graph tracer", 0, 1, b => new GraphTracer(b, new GraphOptions(), ["leaf"])),
    ("function_graph tracer", 11e6, 1, b => new GraphTracer(b, new GraphOptions(), ["leaf"])),
    ("function_graph tracer", 11e6, 2, b => new GraphTracer(b, new GraphOptions(), ["leaf"])),
}.Where(_ => Want("sustained")))
{
    var buffers = new TraceBufferOptions();
    using var traced = Target.Start(Path.Combine(build, "micro-nop5"));
    (Session s, RingTracer tracer, Recorder recorder, string dir) = TraceLeaf(traced, make(buffers), $"sustained-{threads}");
    using Session session = s;
    double NsPerCall(long calls, int pause) => double.Parse(traced.Ask($"run {calls} {threads} {pause}").Split(' ')[1], CultureInfo.InvariantCulture);
    // The pause (busy iterations between calls) whose rate is closest above the wanted one: bisection on short runs.
    int pause = 0;
    if (callsPerSecond > 0)
    {
        int lo = 0, hi = 4096;
        while (hi - lo > 1)
        {
            int mid = (lo + hi) / 2;
            if (threads * 1e9 / NsPerCall(1_000_000, mid) >= callsPerSecond)
            {
                lo = mid;
            }
            else
            {
                hi = mid;
            }
        }
        pause = lo;
    }
    // Size the run to last about 10 s at this rate.
    double nsPerCall = NsPerCall(2_000_000, pause);
    // The calibration's short runs (some flat out) lose events: counted before the run, not in it.
    Thread.Sleep(100);
    long eventsBefore = recorder.Events;
    ulong lostBefore = tracer.LostSoFar;
    var clock = Stopwatch.StartNew();
    nsPerCall = NsPerCall((long)(10e9 / nsPerCall), pause);
    double elapsed = clock.Elapsed.TotalSeconds;
    ulong lostRun = tracer.LostSoFar - lostBefore;
    s.Unregister(tracer);
    RecordSummary sum = recorder.Finish("micro");
    long eventsRun = sum.Events - eventsBefore;
    ulong total = (ulong)eventsRun + lostRun;
    string how = pause == 0
        ? callsPerSecond > 0 ? $"flat out ({callsPerSecond / 1e6:F0} M calls/s was out of reach)" : "flat out"
        : $"paced at {threads * 1e3 / nsPerCall:F1} M calls/s in all ({pause} pause iterations)";
    string anchor = double.TryParse(Environment.GetEnvironmentVariable("UFTRACE_NS_1"), CultureInfo.InvariantCulture, out double u)
        ? $"`uftrace record` on the same leaf, 1 thread: {2e3 / u:F1} M events/s (entry+exit, it waits instead of losing) | — | {eventsRun / elapsed / 1e6 / (2e3 / u):F1}×"
        : "uftrace | not run | —";
    string goal = callsPerSecond == 0 ? "—" : "≥ 20 M events/s, 0 lost";
    rows.Add($"| {label}, {threads} thread(s) calling {how} for {elapsed:F1} s, default {buffers.BufferBytes >> 20} MiB buffers | {total / elapsed / 1e6:F1} M events/s offered; {eventsRun / elapsed / 1e6:F1} M events/s written, {lostRun:N0} lost ({100.0 * lostRun / Math.Max(1, total):F2} %); calibration before it: {sum.Lost - lostRun:N0} lost | {anchor} | {goal} |");
    recorder.Dispose();
    s.Detach();
    Directory.Delete(dir, recursive: true);
}

// ---- no-loss mode (--no-drop): threads calling the traced leaf flat out, ~10 s, 1 and 2 threads ----
if (Want("nodrop"))
{
    using var plain = Target.Start(Path.Combine(build, "micro-nop5"));
    foreach ((string label, Func<TraceBufferOptions, RingTracer> make) in new (string, Func<TraceBufferOptions, RingTracer>)[]
    {
        ("function tracer", b => new FunctionTracer(b, ["leaf"])),
        ("function_graph tracer", b => new GraphTracer(b, new GraphOptions(), ["leaf"])),
    })
    {
        foreach (int threads in new[] { 1, 2 })
        {
            double untraced = double.Parse(plain.Ask($"run 20000000 {threads} 0").Split(' ')[1], CultureInfo.InvariantCulture);
            using var traced = Target.Start(Path.Combine(build, "micro-nop5"));
            (Session s, RingTracer tracer, Recorder recorder, string dir) = TraceLeaf(traced, make(new TraceBufferOptions { NoDrop = true }), $"nodrop-{threads}");
            using Session session = s;
            double probe = double.Parse(traced.Ask($"run 2000000 {threads} 0").Split(' ')[1], CultureInfo.InvariantCulture);
            long calls = (long)(10e9 / probe);
            var clock = Stopwatch.StartNew();
            double nsPerCall = double.Parse(traced.Ask($"run {calls} {threads} 0").Split(' ')[1], CultureInfo.InvariantCulture);
            double elapsed = clock.Elapsed.TotalSeconds;
            s.Unregister(tracer);
            RecordSummary sum = recorder.Finish("micro");
            string anchor = double.TryParse(Environment.GetEnvironmentVariable($"UFTRACE_NS_{threads}"), CultureInfo.InvariantCulture, out double u)
                ? $"`uftrace record` (waits, never loses): +{u:F1} ns per call | {(nsPerCall - untraced) / u:F2}"
                : "uftrace: not run | —";
            rows.Add($"| --no-drop, {label}, {threads} thread(s) flat out for {elapsed:F1} s: written rate, lost, added per call (untraced {untraced:F1} ns), share of the time threads waited | {sum.Events / sum.Elapsed.TotalSeconds / 1e6:F1} M events/s, {sum.Lost:N0} lost, +{nsPerCall - untraced:F1} ns per call, waited {100 * sum.WriterWait.TotalSeconds / (threads * elapsed):F0} % | {anchor} | 0 lost |");
            recorder.Dispose();
            s.Detach();
            Directory.Delete(dir, recursive: true);
        }
    }
}

// ---- live patch: a 20-function patch into the running 50,000-function program ----
string patch20 = Path.Combine(build, "patch20.so");
if (Want("livepatch") && File.Exists(patch20))
{
    using var target = Target.Start(Path.Combine(build, "many"), "idle");
    Session s = Session.Attach(target.Pid);
    var patcher = Hotwire.Livepatch.LivePatcher.Open(s);
    var obj = Hotwire.Livepatch.PatchObject.Load(patch20);
    var apply = new List<double>(); var revert = new List<double>();
    double first = 0;
    for (int i = 0; i < Runs + 1; i++)
    {
        var clock = Stopwatch.StartNew();
        patcher.Apply(Hotwire.Livepatch.PatchObject.Load(patch20), new Dictionary<string, string>(), replace: false);
        double a = clock.Elapsed.TotalMilliseconds;
        clock.Restart();
        patcher.Revert();
        double r = clock.Elapsed.TotalMilliseconds;
        if (i == 0)
        {
            first = a;
        }
        else
        {
            apply.Add(a); revert.Add(r);
        }
    }
    rows.Add($"| live patch of 20 functions (load, relocate, redirect), first / after / revert | {first:F1} / {Median(apply):F1} / {Median(revert):F1} ms | — | — | — | ≤ 50 ms |");
    rows.Add($"| live patch: longest stop of a target thread (the attach; patching stops none) | {s.LongestStop.TotalMilliseconds:F2} ms | — | — | — | ≤ 5 ms |");
    s.Detach();
    s.Dispose();
    _ = obj;
}

// ---- readers: hotwire report on a recording of at least 100 M function_graph events ----
// The native executable (HOTWIRE_EXE) and, beside it, the JIT build (HOTWIRE_DLL): NativeAOT has no dynamic PGO.
if (Want("report") && Environment.GetEnvironmentVariable("HOTWIRE_EXE") is { } hotwireExe)
{
    using var traced = Target.Start(Path.Combine(build, "micro-nop5"));
    (Session s, RingTracer tracer, Recorder recorder, string dir) = TraceLeaf(traced, new GraphTracer(new TraceBufferOptions(BufferBytes: 16 << 20), new GraphOptions(), ["leaf"]), "report100m");
    using Session session = s;
    while (recorder.Events < 100_000_000)
    {
        traced.Ask("run 10000000 1 20");
    }
    s.Unregister(tracer);
    RecordSummary sum = recorder.Finish("micro");
    recorder.Dispose();
    s.Detach();
    string? hotwireDll = Environment.GetEnvironmentVariable("HOTWIRE_DLL");
    var times = new List<double>();
    var jitTimes = new List<double>();
    double Report(string file, params string[] args)
    {
        var clock = Stopwatch.StartNew();
        using var report = Process.Start(new ProcessStartInfo(file, [.. args, "report", "-d", dir]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        report.StandardOutput.ReadToEnd();
        report.WaitForExit();
        return clock.Elapsed.TotalSeconds;
    }
    for (int i = 0; i < 3; i++)
    {
        times.Add(Report(hotwireExe));
        if (hotwireDll is not null)
        {
            jitTimes.Add(Report("dotnet", hotwireDll));
        }
    }
    long bytes = new FileInfo(Path.Combine(dir, TraceData.EventsFile)).Length;
    string jit = jitTimes.Count > 0 ? $" (JIT: {Median(jitTimes):F1} s)" : "";
    rows.Add($"| `hotwire report` on a function_graph recording of {sum.Events / 1e6:F0} M events ({bytes / 1e6:F0} MB) | {Median(times):F1} s{jit} | — | — | — | ≤ 10 s |");
    Directory.Delete(dir, recursive: true);
}

// ---- attach: inject + agent ready, and the one stopped thread ----
if (Want("attach"))
using (var idle = Target.Start(Path.Combine(build, "micro-sled")))
{
    var attach = new List<double>(); var stop = new List<double>(); var detach = new List<double>();
    for (int i = 0; i < Runs + 1; i++)
    {
        var clock = Stopwatch.StartNew();
        Session s = Session.Attach(idle.Pid);
        double a = clock.Elapsed.TotalMilliseconds;
        clock.Restart();
        s.Detach();
        if (i > 0) // the first attach also pays the JIT
        {
            attach.Add(a); stop.Add(s.LongestStop.TotalMilliseconds); detach.Add(clock.Elapsed.TotalMilliseconds);
        }
    }
    rows.Add($"| attach (inject + agent ready) | {Median(attach):F1} ms | — | — | — | ≤ 50 ms |");
    rows.Add($"| longest stop of a target thread during attach | {Median(stop):F2} ms | — | — | — | ≤ 5 ms |");
    rows.Add($"| detach (restore all, handler back, agent gone) | {Median(detach):F1} ms | — | — | — | — |");
}

// ---- a process that changes: dlopen while attached, detach of a forked tree ----
if (Want("processes"))
{
    // dlopen of libflav.so (3 functions, a constructor), as the program measures it, untraced and
    // attached (the library is traced before dlopen returns); and Hotwire's side of it.
    string dlt = Path.Combine(build, "dlthreads", "prog");
    double DlopenMs(Target t)
    {
        double ns = double.Parse(t.Ask("load libflav.so lib_poly").Split(' ')[2], CultureInfo.InvariantCulture);
        t.Ask("unload");
        return ns / 1e6;
    }
    var bare = new List<double>(); var traced = new List<double>(); var latency = new List<double>();
    using (var plain = Target.Start(dlt))
    using (var attached = Target.Start(dlt))
    {
        using Session s = Session.Attach(attached.Pid);
        s.Register(new CountingOps());
        DlopenMs(plain);
        DlopenMs(attached);   // warm: the first one also pays Hotwire's JIT
        for (int i = 0; i < Runs; i++)
        {
            bare.Add(DlopenMs(plain));
            traced.Add(DlopenMs(attached));
            latency.Add(s.LibraryLatencies[^1]);
        }
    }
    rows.Add($"| dlopen of a 3-function library while attached: its functions traced before dlopen returns (dlopen's wall time in the target) | {Median(traced):F2} ms | dlopen untraced | {Median(bare):F2} ms | {Median(traced) / Median(bare):F1} | — |");
    rows.Add($"| rendezvous hit → the new library traced (Hotwire's side of it) | {Median(latency):F2} ms | — | — | — | within ms |");

    // Detach of a prefork server's tree (1 + 4 workers + 11 connection children, all forked while
    // traced) against the same server before it forked.
    var tree = new List<double>(); var single = new List<double>(); int processes = 0;
    for (int i = 0; i < Runs + 1; i++)
    {
        using var server = Target.Start(Path.Combine(build, "prefork", "prog"));
        var clock = Stopwatch.StartNew();
        Session alone = Session.Attach(server.Pid);
        alone.Register(new CountingOps(["serve"]));
        clock.Restart();
        alone.Detach();
        double one = clock.Elapsed.TotalMilliseconds;
        Session s = Session.Attach(server.Pid);
        s.Register(new CountingOps(["serve"]));
        server.Ask("spawn");
        var clients = new List<System.Net.Sockets.TcpClient>();
        for (int c = 0; c < 11; c++)
        {
            var client = new System.Net.Sockets.TcpClient("127.0.0.1", server.Port);
            var stream = client.GetStream();
            stream.Write("1\n"u8);
            stream.ReadExactly(new byte[2]);
            clients.Add(client);
        }
        processes = 1 + s.ForkedProcesses().Count;
        clock.Restart();
        s.Detach();
        double all = clock.Elapsed.TotalMilliseconds;
        foreach (var c in clients)
        {
            c.Dispose();
        }
        server.Ask("stop");
        if (i > 0)
        {
            tree.Add(all); single.Add(one);
        }
    }
    rows.Add($"| detach of a {processes}-process tree forked while traced (every process restored) | {Median(tree):F1} ms | detach of the server alone | {Median(single):F1} ms | {Median(tree) / Median(single):F1} | — |");
}

// ---- relocated entries (no compiler site, --relocate): per-call cost against a NOP5 site, and enabling 10,000 ----
if (Want("relocated"))
using (var plain = Target.Start(Path.Combine(build, "micro-plain")))
using (var relocated = Target.Start(Path.Combine(build, "micro-plain")))
using (var nop5 = Target.Start(Path.Combine(build, "micro-nop5")))
{
    using Session sr = Session.Attach(relocated.Pid, new SessionOptions { RelocateEntries = true });
    sr.Register(new CountingOps(["leaf"]));
    using Session sn = Session.Attach(nop5.Pid);
    sn.Register(new CountingOps(["leaf"]));
    var p = new List<double>(); var r = new List<double>(); var n = new List<double>();
    for (int i = 0; i < Runs; i++)
    {
        p.Add(Ns(plain, 1)); r.Add(Ns(relocated, 1)); n.Add(Ns(nop5, 1));
    }
    double mp = Median(p), mr = Median(r), mn = Median(n);
    rows.Add($"| counting ops on a relocated entry (no compiler site: jmp, thunk, trampoline, relocated copy), added per call, 1 thread | {mr - mp:+0.00;-0.00} ns | counting ops on a NOP5 site, added per call | {mn - mp:+0.00} ns | {(mr - mn):+0.00;-0.00} ns apart | ≤ +3 ns apart |");
}
if (Want("relocated") && File.Exists(Path.Combine(build, "many10k-plain")))
using (var many = Target.Start(Path.Combine(build, "many10k-plain"), "idle"))
{
    using Session s = Session.Attach(many.Pid, new SessionOptions { RelocateEntries = true });
    (double cold, double warm, double off, double warmOff, int sites) = EnableDisable(s, new CountingOps(["f*:mod:many10k-plain"]));
    rows.Add($"| enable {sites:N0} relocated entries (a program built without sites), first time (classify, place detours, convert) / after; disable, first time / after | {cold:F1} / {warm:F1}; {off:F1} / {warmOff:F1} ms | — | — | — | after ≤ 50 ms |");
}
foreach (string r in rows)
{
    Console.WriteLine(r);
}

// Attach to a micro target and record every call of its leaf.
static (Session, RingTracer, Recorder, string) TraceLeaf(Target target, RingTracer tracer, string name)
{
    (ulong shared, ulong perSite) = tracer is GraphTracer g ? GraphTracer.SharedBytes(g.Buffers, g.Options) : (TraceBufferOptions.SharedBytes(tracer.Buffers), 0UL);
    Session s = Session.Attach(target.Pid, new SessionOptions { ExtraSharedBytes = shared, ExtraSharedBytesPerSite = perSite });
    string dir = Path.Combine(Path.GetTempPath(), $"hotwire-bench-{Environment.ProcessId}-{name}");
    var recorder = new Recorder(s, tracer, dir);
    recorder.NoteTracedSites(s.Register(tracer));
    recorder.Start();
    return (s, tracer, recorder, dir);
}

// Enables and disables an ops: the first time, then the median of Runs more (ms), and how many sites it took.
static (double Cold, double Warm, double Off, double WarmOff, int Sites) EnableDisable(Session s, Ops ops)
{
    var clock = Stopwatch.StartNew();
    int sites = s.Register(ops).Count;
    double cold = clock.Elapsed.TotalMilliseconds;
    clock.Restart();
    s.Unregister(ops);
    double off = clock.Elapsed.TotalMilliseconds;
    var warm = new List<double>(); var warmOff = new List<double>();
    for (int i = 0; i < Runs; i++)
    {
        clock.Restart();
        s.Register(ops);
        warm.Add(clock.Elapsed.TotalMilliseconds);
        clock.Restart();
        s.Unregister(ops);
        warmOff.Add(clock.Elapsed.TotalMilliseconds);
    }
    return (cold, Median(warm), off, Median(warmOff), sites);
}

static double Median(List<double> v)
{
    var s = v.Order().ToList();
    return s[s.Count / 2];
}

/// <summary>A benchmark target, started under sh so that this process is not its parent (see tests' TargetProcess).</summary>
sealed class Target : IDisposable
{
    private readonly Process _sh;

    private Target(Process sh, int pid)
    {
        _sh = sh;
        Pid = pid;
    }

    public int Pid { get; }

    /// <summary>The third word of the ready line ("ready PID PORT"), for a server.</summary>
    public int Port { get; private init; }

    public static Target Start(string path, params string[] args)
    {
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { "-c", "exec 3<&0; \"$@\" <&3 3<&- & wait $!", "sh", path }.Concat(args))
        {
            psi.ArgumentList.Add(a);
        }
        Process sh = Process.Start(psi)!;
        string ready = sh.StandardOutput.ReadLine() ?? throw new InvalidOperationException($"{path} did not start");
        string[] words = ready.Split(' ');
        return new Target(sh, int.Parse(words[1])) { Port = words.Length > 2 && int.TryParse(words[2], out int port) ? port : 0 };
    }

    public string Ask(string line)
    {
        _sh.StandardInput.WriteLine(line);
        _sh.StandardInput.Flush();
        return _sh.StandardOutput.ReadLine() ?? throw new InvalidOperationException("the target died");
    }

    public void Dispose()
    {
        try
        {
            Process.GetProcessById(Pid).Kill();
        }
        catch (ArgumentException)
        {
        }
        _sh.WaitForExit(5000);
        _sh.Dispose();
    }
}
