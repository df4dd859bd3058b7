using L = Hotwire.Agent.AgentLayout;
using N = Hotwire.Interop.SyscallNumbers;

namespace Hotwire.Patching;

/// <summary>
/// Processes forked from a traced target keep its patched code and Hotwire's block: their sites go
/// back to their resting bytes at detach (Session.RestoreForkedProcesses) and, if Hotwire dies, by
/// the fork guard (hotwire's hidden <c>__guard</c>), which reads each one's own copy of the table.
/// </summary>
public static unsafe class ForkRestore
{
    /// <summary>A site and the bytes it rests at (its original, or a live patch's jmp), as the block's table holds them.</summary>
    public readonly record struct RestingSite(ulong Address, int Length, SiteBytes Resting);

    /// <summary>The rendezvous' word: where, with our jmp, and as it was.</summary>
    public readonly record struct RendezvousHook(ulong Address, ulong Hooked, ulong Original);

    public static bool RestoreForked(int pid, IReadOnlyList<RestingSite> sites, RendezvousHook hook)
    {
        bool changed = false;
        PtraceThread.Shared.Invoke(() =>
        {
            var stopped = new Dictionary<int, Tracee>();
            try
            {
                // Stop every thread, again until no new one appeared meanwhile.
                for (bool more = true; more;)
                {
                    more = false;
                    foreach (string task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
                    {
                        int tid = int.Parse(Path.GetFileName(task));
                        if (stopped.ContainsKey(tid))
                        {
                            continue;
                        }
                        try
                        {
                            Tracee t = Tracee.Seize(pid, tid);
                            stopped[tid] = t;
                            t.Interrupt();
                            more = true;
                        }
                        catch (HotwireException)
                        {
                            // exited meanwhile
                        }
                    }
                }
                using ProcessMemory memory = ProcessMemory.Open(pid, writable: true);
                Span<byte> now = stackalloc byte[16];
                foreach (RestingSite s in sites)
                {
                    byte[] rest = s.Resting.ToArray(s.Length);
                    if (memory.TryRead(s.Address, now[..s.Length]) && !now[..s.Length].SequenceEqual(rest[..s.Length]))
                    {
                        memory.Write(s.Address, rest[..s.Length]);
                        changed = true;
                    }
                }
                if (hook.Address != 0 && memory.TryRead(hook.Address, now[..8]) && BitConverter.ToUInt64(now) == hook.Hooked)
                {
                    memory.Write(hook.Address, BitConverter.GetBytes(hook.Original));
                    changed = true;
                }
            }
            catch (DirectoryNotFoundException)
            {
                // the process exited meanwhile
            }
            catch (TargetExitedException)
            {
            }
            catch (HotwireException)
            {
                // not ours to change (permission), or gone
            }
            finally
            {
                foreach (Tracee t in stopped.Values)
                {
                    t.Detach();
                }
            }
        });
        return changed;
    }

    /// <summary>
    /// The fork guard's work (hotwire's hidden <c>__guard</c>, started beside every tracing
    /// session): once the Hotwire that attached to <paramref name="targetPid"/> is gone, however it
    /// ended, every process forked from the target that still maps the block gets its sites back to
    /// their resting bytes, as detach does; the target itself is its agent's (the dead-man switch).
    /// The sites are read from each process's own copy of the block's table. Children forked while
    /// this runs are caught by another round. Returns the processes changed.
    /// </summary>
    public static IReadOnlyList<int> RestoreForksOf(int targetPid, ulong dataBase, ulong inode)
    {
        var restored = new List<int>();
        for (int round = 0; round < 5; round++)
        {
            bool any = false;
            foreach (int pid in EarlierBlock.ProcessesMapping(inode, targetPid).ToList())
            {
                if (ReadRestingSites(pid, dataBase) is { } table && RestoreForked(pid, table.Sites, table.Hook))
                {
                    restored.Add(pid);
                    any = true;
                }
            }
            if (!any)
            {
                break;
            }
        }
        return restored.Distinct().ToList();
    }

    private static (List<RestingSite> Sites, RendezvousHook Hook)? ReadRestingSites(int pid, ulong dataBase)
    {
        try
        {
            using ProcessMemory memory = ProcessMemory.Open(pid);
            var header = new byte[L.HeaderSize];
            if (!memory.TryRead(dataBase, header) || BitConverter.ToUInt64(header, 0) != L.Magic)
            {
                return null;
            }
            ulong table = BitConverter.ToUInt64(header, L.SiteTable);
            var word = new byte[8];
            if (!memory.TryRead(table - 8, word))
            {
                return null;
            }
            ulong count = BitConverter.ToUInt64(word);
            if (count > 10_000_000)
            {
                return null;
            }
            var entries = new byte[(int)count * L.SiteEntrySize];
            if (!memory.TryRead(table, entries))
            {
                return null;
            }
            var sites = new List<RestingSite>((int)count);
            for (int i = 0; i < (int)count; i++)
            {
                int e = i * L.SiteEntrySize;
                sites.Add(new RestingSite(BitConverter.ToUInt64(entries, e + L.SiteAddress), entries[e + L.SiteLen],
                    new SiteBytes(BitConverter.ToUInt64(entries, e + L.SiteOriginal), BitConverter.ToUInt64(entries, e + L.SiteOriginal + 8))));
            }
            return (sites, new RendezvousHook(BitConverter.ToUInt64(header, L.RBrkAddr), BitConverter.ToUInt64(header, L.RBrkHooked), BitConverter.ToUInt64(header, L.RBrkOriginal)));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or HotwireException)
        {
            return null;
        }
    }

    /// <summary>
    /// Starts the fork guard for this session: <paramref name="command"/> (hotwire's own executable
    /// with its hidden <c>__guard</c> arguments), in a session of its own so that the terminal's
    /// signals and a kill of Hotwire leave it running; it waits for this process to end.
    /// </summary>
    public static int StartGuard(string path, IReadOnlyList<string> command) => Interop.Spawn.Start(path, command, null, null, detached: true);

    /// <summary>The fork guard: waits until process <paramref name="owner"/> (the Hotwire that attached) has ended, then <see cref="RestoreForksOf"/>.</summary>
    public static IReadOnlyList<int> GuardForks(int owner, int targetPid, ulong dataBase, ulong inode)
    {
        int pidfd = Sys.PidfdOpen(owner);
        if (pidfd >= 0)
        {
            WaitUntilEnded(pidfd);
        }
        return RestoreForksOf(targetPid, dataBase, inode);
    }

    private static unsafe void WaitUntilEnded(int pidfd)
    {
        // struct pollfd { int fd; short events; short revents; }: POLLIN once the process has exited
        long fds = 0;
        *(int*)&fds = pidfd;
        *((short*)&fds + 2) = 1;
        while (Sys.syscall(N.poll, (nint)(&fds), 1, -1, 0, 0, 0) <= 0)
        {
            *((short*)&fds + 3) = 0;
        }
    }
}
