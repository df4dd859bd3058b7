using System.CommandLine;
using System.Globalization;
using Hotwire.Livepatch;
using Hotwire.Memory;
using Hotwire.Patching;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire patch</c>: replaces functions of a running process with those of a patch (a shared
/// object the user builds), stacks, reverts and lists patches. Patches stay when Hotwire exits.
/// </summary>
public static class PatchCommand
{
    public static Command Create()
    {
        var pid = new Option<int>("--pid", "-p") { Description = "The running process to patch", Required = true, CustomParser = r => OptionValues.ProcessId(r) ?? 0 };
        var patch = new Argument<string?>("PATCH.so") { Description = "The patch: gcc -shared -fPIC output with the replacement functions", Arity = ArgumentArity.ZeroOrOne };
        var map = new Option<string[]>("--map") { Description = "Replace OLD with the patch's NEW (OLD=NEW, repeatable); otherwise functions replace their namesakes", AllowMultipleArgumentsPerToken = false };
        var replace = new Option<bool>("--replace") { Description = "Supersede every earlier patch atomically" };
        var revert = new Option<bool>("--revert") { Description = "Remove the newest patch" };
        var list = new Option<bool>("--list") { Description = "Show the patches applied to the process" };
        Option<TimeSpan?> wait = OptionValues.Seconds("--wait-quiescent",
            "Wait until no thread is inside replaced code; with =TIME at most that long, without a time until it is or Ctrl-C (progress every 5 s)");
        wait.Arity = ArgumentArity.ZeroOrOne;
        var command = new Command("patch", "Live-patch functions of a running process (they stay patched after Hotwire exits)")
        {
            pid, patch, map, replace, revert, list, wait,
        };
        command.SetAction(r => (int)Run(r.GetValue(pid), r.GetValue(patch), r.GetValue(map) ?? [], r.GetValue(replace), r.GetValue(revert), r.GetValue(list),
            r.GetResult(wait) is null ? null : r.GetValue(wait) ?? Timeout.InfiniteTimeSpan));
        return command;
    }

    private static ExitCode Run(int pid, string? patchPath, string[] maps, bool replace, bool revert, bool list, TimeSpan? timeout)
    {
        int modes = (patchPath is null ? 0 : 1) + (revert ? 1 : 0) + (list ? 1 : 0);
        if (modes != 1)
        {
            throw new UsageException("give one of: PATCH.so (apply), --revert, --list");
        }
        if (replace && patchPath is null)
        {
            throw new UsageException("--replace goes with a PATCH.so to apply");
        }
        if (maps.Length > 0 && patchPath is null)
        {
            throw new UsageException("--map goes with a PATCH.so to apply");
        }
        if (list)
        {
            return List(pid);
        }
        var mapping = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string m in maps)
        {
            string[] parts = m.Split('=', 2);
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
            {
                throw new UsageException($"--map takes OLD=NEW, not '{m}'");
            }
            if (!mapping.TryAdd(parts[0], parts[1]))
            {
                throw new UsageException($"--map: {parts[0]} is mapped twice ({mapping[parts[0]]} and {parts[1]}); one function has one replacement");
            }
        }
        // Everything about the patch file is checked before the target is touched.
        PatchObject? patch = patchPath is null ? null : PatchObject.Load(patchPath);
        if (patch is not null)
        {
            // ...and against the process, read-only: a patch that cannot apply leaves no trace in it.
            using var reader = ProcessMemory.Open(pid);
            LivePatcher.Plan(patch, mapping, Hotwire.Procfs.ProcessImage.Load(pid), reader);
        }
        else if (Directory.Exists($"/proc/{pid}"))
        {
            EarlierAgents.WaitUntilGone(pid);
            using var reader = ProcessMemory.Open(pid);
            if (LivePatcher.Read(pid, reader, out _) is not { } applied || !applied.Patches.Any(p => p.State == "active"))
            {
                throw new HotwireException($"pid {pid} has no live patch to revert");
            }
        }

        // A function without a compiler site is replaced at its relocated entry (docs/any-binary.md).
        StopSignals signals = StopSignals.Claim();
        using Session session = Session.Attach(pid, new SessionOptions { RelocateEntries = true, StopRequested = () => signals.Signaled });
        if (session.NotReusedBecause is { } why)
        {
            Console.Error.WriteLine($"hotwire: pid {pid} keeps an earlier Hotwire block that could not be reused ({why}): this session adds another");
        }
        LivePatcher patcher = LivePatcher.Open(session);
        PatchResult result = patch is null ? patcher.Revert() : patcher.Apply(patch, mapping, replace);
        string verb = patch is null ? "reverted" : replace ? "applied, replacing all earlier patches," : "applied";
        Console.Error.WriteLine($"hotwire: patch {result.Patch.Id} ({Path.GetFileName(result.Patch.Path)}) {verb} in pid {pid} in {result.Milliseconds:F1} ms: "
            + string.Join(", ", result.Patch.Functions.Select(f => f.Name)));

        using var memory = ProcessMemory.Open(pid);
        List<ThreadCheck> threads = LivePatcher.CheckThreads(pid, result.OldCode, memory, session.AgentTid);
        Report(threads);
        if (timeout is TimeSpan limit)
        {
            using StopSignals stop = StopSignals.Claim();
            long started = Environment.TickCount64;
            long deadline = limit == Timeout.InfiniteTimeSpan ? long.MaxValue : started + (long)limit.TotalMilliseconds;
            long nextReport = started + 5000;
            string Busy() => string.Join(", ", threads.Where(t => t.InsideOld.Count > 0 || t.State == "running").Select(Describe));
            while (threads.Any(t => t.InsideOld.Count > 0 || t.State == "running"))
            {
                if (stop.Signaled)
                {
                    session.Detach();
                    Console.Error.WriteLine($"hotwire: interrupted while waiting: the patch stays applied; still inside replaced code or running unchecked: {Busy()}");
                    return ExitCode.Interrupted;
                }
                if (Environment.TickCount64 >= nextReport)
                {
                    Console.Error.WriteLine($"hotwire: still waiting after {(Environment.TickCount64 - started) / 1000} s: {Busy()} (Ctrl-C stops waiting; the patch stays)");
                    nextReport += 5000;
                }
                if (Environment.TickCount64 > deadline)
                {
                    session.Detach();
                    Console.Error.WriteLine($"hotwire: after {limit.TotalSeconds:F0} s threads are still inside replaced code or running unchecked: "
                        + string.Join(", ", threads.Where(t => t.InsideOld.Count > 0 || t.State == "running").Select(Describe)) + " (the patch stays applied)");
                    return ExitCode.Failure;
                }
                stop.Token.WaitHandle.WaitOne(10);
                if (!session.IsAlive())
                {
                    Console.Error.WriteLine($"hotwire: pid {pid} exited while Hotwire waited for it to leave the replaced code");
                    return ExitCode.Success;
                }
                try
                {
                    threads = LivePatcher.CheckThreads(pid, result.OldCode, memory, session.AgentTid);
                }
                catch (HotwireException) when (!session.IsAlive())
                {
                    Console.Error.WriteLine($"hotwire: pid {pid} exited while Hotwire waited for it to leave the replaced code");
                    return ExitCode.Success;
                }
            }
            Console.Error.WriteLine($"hotwire: quiescent: no thread of pid {pid} is inside replaced code");
        }
        session.Detach();
        return ExitCode.Success;
    }

    private static void Report(List<ThreadCheck> threads)
    {
        var inside = threads.Where(t => t.InsideOld.Count > 0).ToList();
        int running = threads.Count(t => t.State == "running");
        Console.Error.WriteLine(inside.Count == 0
            ? $"hotwire: no thread is inside replaced code ({threads.Count - running} checked{(running > 0 ? $", {running} running on a CPU not checked" : "")})"
            : "hotwire: still inside replaced code (they finish the old version; new calls go to the new one): " + string.Join(", ", inside.Select(Describe)));
    }

    private static string Describe(ThreadCheck t) => t.InsideOld.Count > 0
        ? $"{t.Name}-{t.Tid} in {string.Join("/", t.InsideOld)}"
        : $"{t.Name}-{t.Tid} ({t.State})";

    private static ExitCode List(int pid)
    {
        if (!Directory.Exists($"/proc/{pid}"))
        {
            throw new HotwireException($"no process with pid {pid}");
        }
        EarlierAgents.WaitUntilGone(pid, refuseLive: false); // a killed Hotwire's agent finishes its restore first
        using var memory = ProcessMemory.Open(pid);
        PatchRegistryData? data = LivePatcher.Read(pid, memory, out _);
        if (data is null || data.Patches.Count == 0)
        {
            Console.WriteLine($"# pid {pid} has no live patches");
            return ExitCode.Success;
        }
        Console.WriteLine("# ID  STATE       APPLIED (UTC)        FUNCTIONS  PATCH");
        foreach (PatchRecord p in data.Patches.OrderBy(p => p.Id))
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{p.Id,4}  {p.State,-10}  {p.Applied:yyyy-MM-dd HH:mm:ss}  {string.Join(",", p.Functions.Select(f => f.Name)),-9}  {p.Path}"));
        }
        return ExitCode.Success;
    }
}
