namespace Hotwire.Patching;

/// <summary>
/// What an ops (a tracer, the counter) gets from the session it is registered in, and nothing more:
/// the target's shared memory and its agent, code space near the sites, the modules and sites, and
/// the moments it must act on. <see cref="Session"/> is the one implementation.
/// </summary>
internal interface IOpsHost
{
    int Pid { get; }

    ProcessImage Image { get; }

    /// <summary>The data area shared with the target (buffers, counters, tables).</summary>
    SharedHeap Heap { get; }

    /// <summary>System calls and atomic stores run in the target by the agent.</summary>
    AgentChannel Channel { get; }

    IReadOnlyList<SiteRecord> Sites { get; }

    /// <summary>How many site numbers the session may hand out: per-site arrays are sized for it.</summary>
    int SiteIdCapacity { get; }

    /// <summary>True once detached: the shared memory is unmapped.</summary>
    bool IsDetached { get; }

    IEnumerable<SiteRecord> SitesOf(string function);

    /// <summary>Code shared by many sites (an entry routine, a return handler) placed in a trampoline region; never unmapped.</summary>
    ulong PlaceCode(Func<ulong, byte[]> assemble);

    bool ReadTarget(ulong address, Span<byte> into);

    bool IsMapped(ulong address);

    /// <summary>Runs now, or for a launched program once its libraries are loaded and relocated.</summary>
    void WhenLibrariesLoaded(Action<ProcessImage> action);

    /// <summary>Runs when libraries loaded after attach have been relocated (GOT slots can be hooked then).</summary>
    void WhenModulesRelocated(Action<IReadOnlyList<LoadedModule>> action);

    /// <summary>Once every site is restored, before the agent exits: undoes what pinned the block, or says it could not.</summary>
    void WhenRestored(Func<bool> unpin);

    /// <summary>A graph tracer's shadow stacks, for a later Hotwire deciding whether the block can be taken over.</summary>
    void DescribeShadowStacks(ulong map, ulong size, ulong records);

    /// <summary>The block stays in use after detach (GOT slots point into it): a later Hotwire must not take it over.</summary>
    void PinBlock();
}
