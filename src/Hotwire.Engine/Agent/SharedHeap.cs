using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Agent;

/// <summary>
/// The data area of Hotwire's memfd, shared with the target: a bump allocator over offsets that
/// Hotwire reads and writes through <see cref="Shared"/> and generated code reaches at
/// <see cref="Address"/>. Nothing is freed while the session lasts (a thread may still write to a
/// buffer it claimed); what need not stay resident after detach is listed with
/// <see cref="DiscardOnDetach"/>, and the agent's dead-man switch discards the same if Hotwire dies.
/// </summary>
public sealed class SharedHeap(SharedRegion shared, ulong dataBase, ulong next, ulong end, object gate)
{
    private ulong _next = next;
    private readonly List<(ulong Offset, ulong Length)> _discard = [];

    /// <summary>Hotwire's mapping of the memfd: heap offsets are offsets in it.</summary>
    public SharedRegion Shared { get; } = shared;

    /// <summary>Where offset 0 is mapped in the target.</summary>
    public ulong Base { get; } = dataBase;

    /// <summary>The target's address of heap offset <paramref name="offset"/>.</summary>
    public ulong Address(ulong offset) => Base + offset;

    /// <summary><paramref name="size"/> bytes aligned to <paramref name="align"/> (a power of two); their offset.</summary>
    public ulong Allocate(ulong size, ulong align)
    {
        lock (gate)
        {
            ulong at = (_next + align - 1) & ~(align - 1);
            if (at + size > end)
            {
                throw new HotwireException("Hotwire's shared memory in the target is full; trace fewer functions");
            }
            _next = at + size;
            return at;
        }
    }

    /// <summary>Shared memory (page-aligned) whose contents are not needed after detach: event buffers, counters.</summary>
    public void DiscardOnDetach(ulong offset, ulong length)
    {
        lock (gate)
        {
            _discard.Add((offset, length));
            // The agent's dead-man switch does the same if Hotwire dies.
            int n = (int)Shared.ReadU64(L.DiscardCount);
            if (n < L.DiscardMax && !TestSwitches.NoDeadManDiscard)
            {
                Shared.WriteU64((ulong)(L.DiscardList + n * 16), Address(offset));
                Shared.WriteU64((ulong)(L.DiscardList + n * 16 + 8), length & ~4095UL);
                Shared.WriteU64(L.DiscardCount, (ulong)n + 1);
            }
        }
    }

    /// <summary>Gives the listed pages back to the system (detach): the mapping stays, a late writer finds zeros.</summary>
    internal unsafe void Discard()
    {
        foreach ((ulong offset, ulong length) in _discard)
        {
            Sys.madvise((nint)(Shared.Pointer + offset), (nuint)(length & ~4095UL), Sys.MADV_REMOVE);
        }
    }
}
