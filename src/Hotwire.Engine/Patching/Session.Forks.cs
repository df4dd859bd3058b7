using Hotwire.Injection;
using Hotwire.Memory;
using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

public sealed partial class Session
{
    /// <summary>
    /// The processes forked from the target (at any depth, orphans included) that still hold
    /// Hotwire's block: their copy of the code was made while sites were live, so they may run
    /// its trampolines and write events. Children forked after a detach hold it too, with the
    /// original code. Found by the memfd's inode in /proc/*/maps.
    /// </summary>
    /// <summary>The processes forked from the target that still ran traced code at detach, restored then.</summary>
    public IReadOnlyList<int> RestoredForks { get; private set; } = [];

    public IReadOnlyList<int> ForkedProcesses() => _blockInode == 0 ? [] : ProcessesMapping(_blockInode).ToList();

    /// <summary>
    /// Puts every site of each forked process back to its resting bytes (what the target got at
    /// detach: the original, or a live patch's jmp), with all its threads stopped for the writes.
    /// Threads inside a trampoline finish it; the block stays mapped for them. Returns the
    /// processes whose code had to be changed.
    /// </summary>
    public IReadOnlyList<int> RestoreForkedProcesses()
    {
        var restored = new List<int>();
        foreach (int pid in ForkedProcesses())
        {
            if (RestoreForked(pid))
            {
                restored.Add(pid);
            }
        }
        return restored;
    }

    private bool RestoreForked(int pid)
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
                Span<byte> rest = stackalloc byte[16];
                foreach (SiteRecord s in Sites.Where(s => !s.Gone))
                {
                    ulong resting = Shared.ReadU64(SiteEntry(s) + L.SiteOriginal);
                    BitConverter.TryWriteBytes(rest, resting);
                    if (memory.TryRead(s.Address, now[..s.Length]) && !now[..s.Length].SequenceEqual(rest[..s.Length]))
                    {
                        memory.Write(s.Address, rest[..s.Length]);
                        changed = true;
                    }
                }
                ulong brk = Shared.ReadU64(L.RBrkAddr);
                if (brk != 0 && memory.TryRead(brk, now[..1]) && now[0] == 0xcc)
                {
                    memory.Write(brk, [(byte)Shared.ReadU64(L.RBrkOriginal)]);
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
}
