namespace Hotwire;

/// <summary>
/// Test-only switches, read from the environment, that disable a safety mechanism or hold Hotwire
/// at a chosen moment, so that tests can show the mechanism matters (a test with teeth). Nothing a
/// user sets; each is named HOTWIRE_TEST_*.
/// </summary>
public static class TestSwitches
{
    /// <summary>HOTWIRE_TEST_PLAIN_DETOUR_CALL=1: a detour relocates a final call as a call (its callee returns into the detour, not the function).</summary>
    public static bool PlainDetourCall { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_PLAIN_DETOUR_CALL") == "1";

    /// <summary>HOTWIRE_TEST_SKIP_UNSTOPPABLE=1: a thread Hotwire cannot stop (another tracer holds it) is not watched while sleds and relocated entries are converted (the old behaviour).</summary>
    public static bool SkipUnstoppableThreads { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_SKIP_UNSTOPPABLE") == "1";

    /// <summary>HOTWIRE_TEST_NO_PATCH_INTENT=1: live patches are recorded only after the sites switch (the orphaned-patch bug).</summary>
    public static bool NoPatchIntent { get; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_PATCH_INTENT") == "1";

    /// <summary>HOTWIRE_TEST_PAUSE_AFTER_PATCH_BATCH=MS: after a patch's sites switch and before its record is final, say so and wait.</summary>
    public static TimeSpan? PauseAfterPatchBatch { get; } =
        int.TryParse(Environment.GetEnvironmentVariable("HOTWIRE_TEST_PAUSE_AFTER_PATCH_BATCH"), out int ms) ? TimeSpan.FromMilliseconds(ms) : null;

    /// <summary>
    /// HOTWIRE_TEST_REGION_BYTES=N: every trampoline region is N bytes (a multiple of 4096) instead of
    /// being sized for its module's sites, so that regions fill up and more are mapped.
    /// </summary>
    public static ulong? RegionBytes { get; } = ulong.TryParse(Environment.GetEnvironmentVariable("HOTWIRE_TEST_REGION_BYTES"), out ulong n) ? n : null;

    /// <summary>HOTWIRE_TEST_NO_SYSCALL_REWIND=1: system calls our ptrace stops interrupt keep their EINTR.</summary>
    public static bool NoSyscallRewind { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_SYSCALL_REWIND") == "1";

    /// <summary>HOTWIRE_TEST_NO_DEADMAN_DISCARD=1: the dead-man switch keeps the tracers' buffer pages resident.</summary>
    public static bool NoDeadManDiscard { get; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_DEADMAN_DISCARD") == "1";

    /// <summary>HOTWIRE_TEST_NO_GRAVEYARD=1: the graph tracer's return handler does not look for frames dropped as gone (coroutines crash).</summary>
    /// <summary>Trampolines and return handlers do not give back the registers they use (they stay Hotwire's): teeth for Preserved.</summary>
    public static bool ClobberScratch { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_CLOBBER_SCRATCH") == "1";

    public static bool NoGraveyard { get; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_GRAVEYARD") == "1";

    /// <summary>HOTWIRE_TEST_DIE_IN_SLED_PAUSE=1: Hotwire SIGKILLs itself when the agent pauses to let it move threads out of NOP sleds.</summary>
    public static bool DieInSledPause { get; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_DIE_IN_SLED_PAUSE") == "1";

    /// <summary>HOTWIRE_TEST_DEATH_FINISHES_BATCH=1: the agent finishes a paused batch when Hotwire dies (the old behaviour, verify/patch.pml's death-finishes-sled).</summary>
    public static bool DeathFinishesBatch { get; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_DEATH_FINISHES_BATCH") == "1";

    /// <summary>HOTWIRE_TEST_NO_REUSE_CHECK=1: an earlier Hotwire's block is taken over without checking that no thread is inside its code.</summary>
    public static bool NoReuseQuiescenceCheck { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_REUSE_CHECK") == "1";

    /// <summary>HOTWIRE_TEST_ACK_BEFORE_TRACING=1: a thread at the dynamic linker's rendezvous is let go before a new library's sites are traced (its first calls are missed).</summary>
    public static bool AckBeforeTracing { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_ACK_BEFORE_TRACING") == "1";

    /// <summary>HOTWIRE_TEST_NO_HOLDS=1: libraries loaded after attach are not held at their initialisers (their GOT slots are never hooked).</summary>
    public static bool NoHolds { get; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_HOLDS") == "1";

    /// <summary>HOTWIRE_TEST_WAIT_ON_DEAD_RECORDER=1: --no-drop writers do not look at the dead-man switch (they wait for a recorder that is gone).</summary>
    public static bool WaitOnDeadRecorder { get; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_WAIT_ON_DEAD_RECORDER") == "1";

    /// <summary>HOTWIRE_TEST_SLOW_DRAIN_MS=N: the recorder sleeps N ms after each pass over the buffers.</summary>
    public static TimeSpan? SlowDrain { get; } =
        int.TryParse(Environment.GetEnvironmentVariable("HOTWIRE_TEST_SLOW_DRAIN_MS"), out int slowMs) ? TimeSpan.FromMilliseconds(slowMs) : null;

    /// <summary>HOTWIRE_TEST_SLOW_WRITE_MS=N: the recording's writer sleeps N ms before each write (a disk slower than the events).</summary>
    public static TimeSpan? SlowWrite { get; } =
        int.TryParse(Environment.GetEnvironmentVariable("HOTWIRE_TEST_SLOW_WRITE_MS"), out int writeMs) ? TimeSpan.FromMilliseconds(writeMs) : null;

    /// <summary>HOTWIRE_TEST_NO_SIGTRAP_GUARD=1: threads that block SIGTRAP run on during batches (an int3 of ours kills them).</summary>
    public static bool NoSigtrapGuard { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_NO_SIGTRAP_GUARD") == "1";

    /// <summary>HOTWIRE_TEST_STOP_EVERY_THREAD=1: passes over the threads (sled conversion, block takeover) stop even those blocked in a system call.</summary>
    public static bool StopEveryThread { get; set; } = Environment.GetEnvironmentVariable("HOTWIRE_TEST_STOP_EVERY_THREAD") == "1";
}
