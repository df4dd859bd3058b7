using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

/// <summary>
/// Agents an earlier Hotwire injected into a process. One agent per process: a second Hotwire is
/// refused before it touches anything, naming the one that holds the process. An agent whose
/// Hotwire has died is finishing its dead-man restore (it notices within 50 ms, then exits):
/// that is waited for, so that what a new Hotwire reads is the restored process.
/// </summary>
public static class EarlierAgents
{
    public const string ThreadName = "hotwire-agent";

    /// <summary>
    /// Returns once no agent of a dead Hotwire runs in <paramref name="pid"/>. An agent of a live
    /// Hotwire is refused (<paramref name="refuseLive"/>: before attaching) or let be (a reader).
    /// </summary>
    public static void WaitUntilGone(int pid, bool refuseLive = true, TimeSpan? grace = null)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        TimeSpan limit = grace ?? TimeSpan.FromSeconds(3);
        while (true)
        {
            List<int> agents = AgentThreads(pid);
            if (!refuseLive)
            {
                agents.RemoveAll(tid => OwnerOf(pid, tid) is int owner && owner > 0 && ProcStat.IsAlive(owner));
            }
            if (agents.Count == 0)
            {
                return;
            }
            foreach (int tid in agents)
            {
                if (OwnerOf(pid, tid) is int owner && owner > 0 && ProcStat.IsAlive(owner))
                {
                    string who = owner == Environment.ProcessId ? "this Hotwire process" : $"Hotwire pid {owner}";
                    throw new HotwireException(
                        $"pid {pid} is already traced or patched by {who} (its agent is thread {tid}); stop that Hotwire first (Ctrl-C, or kill {owner}: the target is restored either way)");
                }
            }
            if (clock.Elapsed > limit)
            {
                throw new HotwireException(
                    $"pid {pid} still runs an earlier Hotwire's agent (thread {agents[0]}) {limit.TotalSeconds:F0} s after that Hotwire went; it may be stopped (check /proc/{pid}/status): try again later");
            }
            Thread.Sleep(10);
        }
    }

    /// <summary>The threads of <paramref name="pid"/> named like Hotwire's agent.</summary>
    public static List<int> AgentThreads(int pid)
    {
        var result = new List<int>();
        try
        {
            foreach (string task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                try
                {
                    if (File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') == ThreadName && int.TryParse(Path.GetFileName(task), out int tid))
                    {
                        result.Add(tid);
                    }
                }
                catch (IOException)
                {
                    // the thread exited meanwhile
                }
            }
        }
        catch (DirectoryNotFoundException)
        {
        }
        return result;
    }

    /// <summary>The pid of the Hotwire that injected agent thread <paramref name="tid"/>, read from its header; null if unknown.</summary>
    public static int? OwnerOf(int pid, int tid)
    {
        using ProcessMemory memory = ProcessMemory.Open(pid);
        Span<byte> header = stackalloc byte[L.OwnerPid + 8];
        foreach (MemoryMapping m in ProcMaps.Read(pid))
        {
            if (m.Offset != 0 || !m.Path.StartsWith("/memfd:hotwire (deleted)", StringComparison.Ordinal) || !memory.TryRead(m.Start, header))
            {
                continue;
            }
            if (BitConverter.ToUInt64(header) == L.Magic && BitConverter.ToUInt64(header[L.AgentTid..]) == (ulong)tid)
            {
                return (int)BitConverter.ToUInt64(header[L.OwnerPid..]);
            }
        }
        return null;
    }
}
