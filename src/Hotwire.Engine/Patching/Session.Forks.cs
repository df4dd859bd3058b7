using L = Hotwire.Agent.AgentLayout;
using N = Hotwire.Interop.SyscallNumbers;

namespace Hotwire.Patching;

public sealed unsafe partial class Session
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
        var sites = Sites.Where(s => !s.Gone).Select(s => new ForkRestore.RestingSite(s.Address, s.Length, Table.Base(Shared, s))).ToList();
        return ForkRestore.RestoreForked(pid, sites, new ForkRestore.RendezvousHook(Shared.ReadU64(L.RBrkAddr), Shared.ReadU64(L.RBrkHooked), Shared.ReadU64(L.RBrkOriginal)));
    }

    /// <summary>Where the block's data starts in the target, and the memfd's inode: what the fork guard needs.</summary>
    public (ulong DataBase, ulong Inode) BlockIdentity => (DataBase, _blockInode);
}
