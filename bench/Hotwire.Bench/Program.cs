using System.Diagnostics;
using System.Globalization;
using Hotwire.Patching;
using Hotwire.Tracing;

// Engine benchmarks (called by bench/run): prints markdown table rows on stdout.
// Usage: Hotwire.Bench BUILD_DIR   (BUILD_DIR holds micro-plain, micro-nop5, micro-sled, many)
string build = args[0];
string? only = args.Length > 1 ? args[1] : null; // run one section: "calls", "tracer", "attach", "patch"
const int Runs = 5;
var rows = new List<string>();

// ---- added cost per call: untraced binary vs disabled sites vs counting vs redirect ----
const long Calls = 100_000_000;
double Ns(Target t, int threads) => double.Parse(t.Ask($"run {Calls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture);

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

// ---- the function tracer: added cost per traced call (buffers large enough that nothing is lost) ----
{
    var buffers = new TraceBufferOptions(BufferBytes: 64 << 20, MaxThreads: 8);
    // (set up below; a first unmeasured run per thread count touches the buffers' pages once)
    using var plain = Target.Start(Path.Combine(build, "micro-plain"));
    using var traced = Target.Start(Path.Combine(build, "micro-nop5"));
    (Session s, FunctionTracer tracer, Recorder recorder, string dir) = TraceLeaf(traced, buffers, "calls");
    using Session session = s;
    var perThreads = new Dictionary<int, double>();
    foreach (int threads in new[] { 1, 2 })
    {
        var p = new List<double>();
        var t = new List<double>();
        const long TracedCalls = 1_000_000; // fits a 64 MiB buffer: every call writes its event
        traced.Ask($"run {TracedCalls} {threads}");
        Thread.Sleep(200);
        for (int i = 0; i < Runs; i++)
        {
            p.Add(double.Parse(plain.Ask($"run {TracedCalls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture));
            t.Add(double.Parse(traced.Ask($"run {TracedCalls} {threads}").Split(' ')[1], CultureInfo.InvariantCulture));
            Thread.Sleep(200); // let the recorder drain, so that no run finds a full buffer
        }
        perThreads[threads] = Median(t) - Median(p);
        // uftrace's figure for the same leaf, measured by bench/run in the same run (its total per call).
        string anchor = double.TryParse(Environment.GetEnvironmentVariable($"UFTRACE_NS_{threads}"), CultureInfo.InvariantCulture, out double u)
            ? $"`uftrace record`, added per call | {u - Median(p):F1} ns | {(Median(t) - Median(p)) / (u - Median(p)):F3}"
            : "uftrace | not run | —";
        rows.Add($"| function tracer, added per traced call, {threads} thread(s) | {Median(t) - Median(p):+0.00;-0.00} ns | {anchor} | ≤ 18 ns |");
    }
    string uftraceScaling = double.TryParse(Environment.GetEnvironmentVariable("UFTRACE_NS_1"), CultureInfo.InvariantCulture, out double u1)
        && double.TryParse(Environment.GetEnvironmentVariable("UFTRACE_NS_2"), CultureInfo.InvariantCulture, out double u2) ? $"uftrace 2 vs 1 thread: {u2 / u1:F2}×" : "uftrace not run";
    rows.Add($"| function tracer, 2 threads vs 1 thread (per-call cost ratio) | {perThreads[2] / perThreads[1]:F2}× | {uftraceScaling} | — | — | ≤ 1.2× |");
    s.Unregister(tracer);
    RecordSummary sum = recorder.Finish("micro");
    rows.Add($"| function tracer, events of the runs above written to hotwire.data | {sum.Events:N0} events, {sum.Lost} lost | — | — | — | 0 lost |");
    recorder.Dispose();
    s.Detach();
    Directory.Delete(dir, recursive: true);
}

// ---- sustained: one thread calling the traced leaf flat out, then paced (about 20-25 M calls/s here), ~10 s each ----
foreach (int pause in new[] { 0, 60 })
{
    var buffers = new TraceBufferOptions();
    using var traced = Target.Start(Path.Combine(build, "micro-nop5"));
    (Session s, FunctionTracer tracer, Recorder recorder, string dir) = TraceLeaf(traced, buffers, $"sustained-{pause}");
    using Session session = s;
    // Size the run to last about 10 s at this rate.
    double nsPerCall = double.Parse(traced.Ask($"run 2000000 1 {pause}").Split(' ')[1], CultureInfo.InvariantCulture);
    long before = recorder.Events;
    var clock = Stopwatch.StartNew();
    traced.Ask($"run {(long)(10e9 / nsPerCall)} 1 {pause}");
    double elapsed = clock.Elapsed.TotalSeconds;
    s.Unregister(tracer);
    RecordSummary sum = recorder.Finish("micro");
    ulong total = (ulong)sum.Events + sum.Lost;
    string how = pause == 0 ? "flat out" : $"paced ({pause} pause iterations)";
    rows.Add($"| function tracer, one thread calling {how} for {elapsed:F1} s, default 4 MiB buffers | {total / sum.Elapsed.TotalSeconds / 1e6:F1} M calls/s; {sum.Events / sum.Elapsed.TotalSeconds / 1e6:F1} M events/s written ({sum.BytesWritten / sum.Elapsed.TotalSeconds / 1e6:F0} MB/s), {sum.Lost:N0} lost ({100.0 * sum.Lost / Math.Max(1, total):F1} %) | — | — | — | ≥ 20 M events/s, 0 lost |");
    recorder.Dispose();
    s.Detach();
    Directory.Delete(dir, recursive: true);
}

// ---- attach: inject + agent ready, and the one stopped thread ----
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

// ---- patch latency: 1, 256 and 50,000 sites, first time (trampolines generated) and after ----
using (var many = Target.Start(Path.Combine(build, "many"), "idle"))
{
    using Session s = Session.Attach(many.Pid);
    foreach (int n in new[] { 1, 256, 50_000 })
    {
        var ops = new CountingOps(n == 50_000 ? ["f*"] : Enumerable.Range(0, n).Select(i => $"f{i}"));
        var clock = Stopwatch.StartNew();
        s.Register(ops);
        double cold = clock.Elapsed.TotalMilliseconds;
        clock.Restart();
        s.Unregister(ops);
        double off = clock.Elapsed.TotalMilliseconds;
        var warm = new List<double>();
        for (int i = 0; i < Runs; i++)
        {
            clock.Restart();
            s.Register(ops);
            warm.Add(clock.Elapsed.TotalMilliseconds);
            s.Unregister(ops);
        }
        rows.Add($"| enable {n} sites, first time / after / disable | {cold:F2} / {Median(warm):F2} / {off:F2} ms | — | — | — | {(n == 50_000 ? "≤ 20 / ≤ 5 ms" : "—")} |");
    }
}
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
foreach (string r in rows)
{
    Console.WriteLine(r);
}

// Attach to a micro target and record every call of its leaf.
static (Session, FunctionTracer, Recorder, string) TraceLeaf(Target target, TraceBufferOptions buffers, string name)
{
    Session s = Session.Attach(target.Pid, new SessionOptions { ExtraSharedBytes = TraceBufferOptions.SharedBytes(buffers) });
    string dir = Path.Combine(Path.GetTempPath(), $"hotwire-bench-{Environment.ProcessId}-{name}");
    var tracer = new FunctionTracer(buffers, ["leaf"]);
    var recorder = new Recorder(s, tracer, dir);
    recorder.NoteTracedSites(s.Register(tracer));
    recorder.Start();
    return (s, tracer, recorder, dir);
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

    public static Target Start(string path, params string[] args)
    {
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { "-c", "exec 3<&0; \"$@\" <&3 3<&- & wait $!", "sh", path }.Concat(args))
        {
            psi.ArgumentList.Add(a);
        }
        Process sh = Process.Start(psi)!;
        string ready = sh.StandardOutput.ReadLine() ?? throw new InvalidOperationException($"{path} did not start");
        return new Target(sh, int.Parse(ready.Split(' ')[1]));
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
