using Hotwire.Patching;

namespace Hotwire.Injection;

/// <summary>What attach checks and chooses before the process is touched.</summary>
public static class TargetChecks
{
    /// <summary>Before anything is done to the process: it exists, has sites (or entries can be relocated), is not stopped, and no other agent is in it.</summary>
    public static void Preflight(int pid, ProcessImage image, bool relocateEntries)
    {
        string status = $"/proc/{pid}/status";
        if (!File.Exists(status))
        {
            throw new HotwireException($"no process with pid {pid} (it does not exist or has exited)");
        }
        CheckStatus(pid, status);
        if (!image.AllSites.Any() && !relocateEntries)
        {
            throw new HotwireException($"pid {pid} has no patch sites in its {image.Modules.Count} modules: {SiteDiscovery.HowToAddSites}");
        }
        if (ProcStatus.Field(status, "State") is { } state && state.StartsWith('T'))
        {
            throw new HotwireException($"pid {pid} is stopped (SIGSTOP or job control), so Hotwire's agent could not run in it; resume it first (kill -CONT {pid})");
        }
        EarlierAgents.WaitUntilGone(pid);
    }

    /// <summary>Refuses a process under a tracer, or with CET user shadow stacks (a call cannot be emulated there).</summary>
    public static void CheckStatus(int pid, string statusPath)
    {
        if (ProcStatus.Field(statusPath, "x86_Thread_features") is { } features && features.Contains("shstk", StringComparison.Ordinal))
        {
            throw new HotwireException(
                $"pid {pid} runs with CET user shadow stacks (shstk): Hotwire cannot emulate calls from its breakpoint handler there; run the program without shadow stacks (GLIBC_TUNABLES=glibc.cpu.x86_shstk=off)");
        }
        if (ProcStatus.IntField(statusPath, "TracerPid") is int tracer && tracer != 0)
        {
            throw new HotwireException($"pid {pid} is already traced by {Tracee.DescribeTracer(tracer)}; detach the debugger or tracer first");
        }
    }

    // The main thread when it is alive (it is the one most often blocked in a syscall: the harder case,
    // and the one tests exercise), else any live thread.
    public static int ChooseThread(int pid)
    {
        foreach (string task in Directory.EnumerateDirectories($"/proc/{pid}/task").OrderBy(t => Path.GetFileName(t) == pid.ToString() ? 0 : 1))
        {
            if (ProcStat.IsAliveAt(Path.Combine(task, "stat")))
            {
                return int.Parse(Path.GetFileName(task));
            }
        }
        throw new HotwireException($"pid {pid} has no live thread to attach to");
    }
}
