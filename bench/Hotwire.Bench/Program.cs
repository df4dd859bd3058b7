using System.Diagnostics;
using System.Globalization;
using Hotwire.Patching;

// Engine benchmarks (called by bench/run): prints markdown table rows on stdout.
// Usage: Hotwire.Bench BUILD_DIR   (BUILD_DIR holds micro-plain, micro-nop5, micro-sled, many)
string build = args[0];
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
        rows.Add($"| call of a noinline leaf, untraced binary (anchor), {threads} thread(s) | {mp:F2} ns | — | — |");
        rows.Add($"| disabled site (NOP5), added per call, {threads} thread(s) | {mn - mp:+0.00;-0.00} ns | untraced binary {mp:F2} ns | not measurable |");
        rows.Add($"| counting ops, added per call, {threads} thread(s) | {mc - mp:+0.00;-0.00} ns | untraced binary {mp:F2} ns | ≤ 5 ns |");
        rows.Add($"| redirect (jmp to a copy of the leaf), added per call, {threads} thread(s) | {mr - mp:+0.00;-0.00} ns | untraced binary {mp:F2} ns | ≤ 2 ns |");
    }
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
    rows.Add($"| attach (inject + agent ready) | {Median(attach):F1} ms | — | ≤ 50 ms |");
    rows.Add($"| longest stop of a target thread during attach | {Median(stop):F2} ms | — | ≤ 5 ms |");
    rows.Add($"| detach (restore all, handler back, agent gone) | {Median(detach):F1} ms | — | — |");
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
        rows.Add($"| enable {n} sites, first time / after / disable | {cold:F2} / {Median(warm):F2} / {off:F2} ms | — | {(n == 50_000 ? "≤ 20 / ≤ 5 ms" : "—")} |");
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
    rows.Add($"| one site toggle (call↔nop, 3 syncs), idle target | {clock.Elapsed.TotalMicroseconds / (2 * Toggles):F1} µs | — | ≤ 100 µs |");
}
foreach (string r in rows)
{
    Console.WriteLine(r);
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
